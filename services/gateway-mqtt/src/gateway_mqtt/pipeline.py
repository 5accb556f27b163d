"""Received MQTT messages → micro-batched ``PointBatch`` publishes → PUBACKs in receipt order.

Consumes paho ``MQTTMessage``s (from ``MqttConnection``) and produces, per (domain, source), a
``PointBatch`` on ``dp.raw.<domain>.<source>`` once it holds ``batch_max_points`` points or
``batch_linger_ms`` after its first point; a bad message becomes one ``RejectedInput`` on
``dp.rejected.mqtt``. A QoS 1 message is acknowledged to the broker only after JetStream acked
the publish that holds it, and PUBACKs go out in the order the messages arrived (MQTT 4.6: a
later message's batch may be acked first; its PUBACK waits for the earlier ones).

A failed publish is retried with backoff for as long as the MQTT connection that delivered its
messages lasts; once that connection is gone the broker redelivers them to the next one (same
``Nats-Msg-Id`` and idempotency keys), so the old batch is abandoned. The number of unacked
messages is bounded by the broker (MQTT 5 receive maximum = ``max_in_flight``) and, should a
broker send more, by pausing reads.

A message without a timestamp gets its receive time. To keep a broker redelivery (DUP) of such a
message idempotent, the first receive time is remembered per (topic, payload, packet id) until
the message is acked; this covers reconnects within one process, not a crash (see README).
"""

from __future__ import annotations

import asyncio
import random
import time
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from gateway_mqtt.metrics import (
    ACK_LATENCY,
    BATCHES_PUBLISHED,
    ERRORS,
    IN_FLIGHT,
    MESSAGES_ACKED,
    MESSAGES_RECEIVED,
    MESSAGES_REJECTED,
    POINTS_PUBLISHED,
    REDELIVERIES,
)
from gateway_mqtt.normalize import (
    Rejection,
    ResolveSensor,
    Route,
    normalize_message,
    parse_topic,
    with_ts,
)
from gateway_mqtt.settings import GatewayMqttSettings
from tributary_contracts import DataPoint, Namespace, RejectedEntry, RejectedInput, Transport
from tributary_ingest.batches import (
    HEADER_ROOM_BYTES,
    OutgoingMessage,
    encode_batches,
    error_type,
    rejected_message,
)
from tributary_runtime.logs import ThrottledWarning

log = structlog.get_logger("gateway_mqtt")

Publish = Callable[[str, bytes, dict[str, str]], Awaitable[Any]]
"""Publish one message to JetStream and return its PubAck; raise if it was not acked."""

TOPIC_CACHE_SIZE = 50_000
RETRY_MIN_SECONDS = 0.05
RETRY_MAX_SECONDS = 2.0


class Acker(Protocol):
    """The live broker connection, as the pipeline sees it."""

    def ack(self, mid: int) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class IncomingMessage(Protocol):
    """What the pipeline reads of a paho ``MQTTMessage``."""

    mid: int
    qos: int
    dup: bool
    payload: bytes
    _topic: bytes


class _Batch:
    __slots__ = ("domain", "mids", "points", "received_at", "source_id", "stamp_keys", "timer")

    def __init__(self, domain: str, source_id: str, received_at: datetime) -> None:
        self.domain = domain
        self.source_id = source_id
        self.received_at = received_at
        self.points: list[DataPoint] = []
        self.mids: list[int] = []
        self.stamp_keys: list[tuple[bytes, bytes, int]] = []
        self.timer: asyncio.TimerHandle | None = None


def payload_excerpt(payload: bytes, limit: int) -> str:
    return payload[:limit].decode(errors="replace")


def encode_rejection(
    topic: str,
    payload: bytes,
    rejection: Rejection,
    received_at: datetime,
    subject: str,
    excerpt_bytes: int,
) -> OutgoingMessage:
    """The ``RejectedInput`` for one refused message on ``subject``.

    The entry carries the topic; the id hashes the content without ``received_at`` so a
    redelivery of the same bad message dedups.
    """
    message = RejectedInput(
        transport=Transport.MQTT,
        domain=rejection.domain,
        source_id=rejection.source_id,
        received_at=received_at,
        rejected=[
            RejectedEntry(
                stream_id=rejection.stream_id,
                reason=rejection.reason,
                topic=topic,
                excerpt=payload_excerpt(payload, excerpt_bytes),
            )
        ],
    )
    return rejected_message(message, subject)


class Pipeline:
    """Everything between paho's ``on_message`` and the PUBACK (one per process)."""

    def __init__(
        self,
        settings: GatewayMqttSettings,
        publish: Publish,
        *,
        max_message_bytes: int = 1024 * 1024,
        resolve_sensor: ResolveSensor | None = None,
    ) -> None:
        self._settings = settings
        self._resolve_sensor = resolve_sensor
        self._publish = publish
        self._ns: Namespace = settings.namespace
        self._prefix = settings.topic_prefix
        self._max_points = settings.batch_max_points
        self._linger = settings.batch_linger_ms / 1000
        self._max_in_flight = settings.max_in_flight
        self._max_payload = settings.max_payload_bytes
        self._max_bytes = max_message_bytes - HEADER_ROOM_BYTES
        self._rejected_subject = self._ns.rejected_subject(Transport.MQTT.value)
        self._routes: dict[bytes, Route | Rejection] = {}
        self._subjects: dict[tuple[str, str], str] = {}
        self._batches: dict[tuple[str, str], _Batch] = {}
        self._order: deque[int] = deque()  # unacked QoS 1 packet ids, in receipt order
        self._done: set[int] = set()  # of those, the ones whose publish JetStream acked
        self._first_ts: dict[tuple[bytes, bytes, int], datetime] = {}
        self._tasks: set[asyncio.Task[None]] = set()
        self._acker: Acker | None = None
        self._gen = 0
        self._paused = False
        self._stopping = False
        self._warn = ThrottledWarning(log)
        self._loop = asyncio.get_running_loop()
        IN_FLIGHT.set_function(lambda: len(self._order))

    # -- connection lifecycle -----------------------------------------------------------
    def attach(self, acker: Acker) -> None:
        """A new broker connection: acks go to it from now on."""
        self.detach()
        self._acker = acker
        self._paused = False

    def detach(self) -> None:
        """The connection is gone: whatever it delivered and we did not ack, the broker will
        deliver again, so unpublished batches are dropped and late PubAcks ignored."""
        self._gen += 1
        self._acker = None
        for batch in self._batches.values():
            if batch.timer is not None:
                batch.timer.cancel()
        self._batches.clear()
        self._order.clear()
        self._done.clear()

    @property
    def in_flight(self) -> int:
        return len(self._order)

    # -- receive path ---------------------------------------------------------------------
    def handle(self, message: IncomingMessage) -> None:
        """paho ``on_message``: normalise, add to its batch (or reject); never raises."""
        try:
            self._handle(message)
        except Exception as exc:  # a bug must not stop the receive loop; the message
            # stays unacked and comes back after a reconnect.
            ERRORS.labels("handle", type(exc).__name__[:40]).inc()
            log.exception("handle_failed", error=repr(exc))

    def _handle(self, message: IncomingMessage) -> None:
        received_at = datetime.now(UTC)
        mid = message.mid if message.qos > 0 else 0
        if mid:
            self._order.append(mid)
            if len(self._order) > self._max_in_flight and not self._paused and self._acker:
                self._paused = True
                self._acker.pause_reading()
        if message.dup:
            REDELIVERIES.inc()
        topic_bytes = message._topic
        route = self._routes.get(topic_bytes)
        if route is None:
            route = self._route(topic_bytes)
        payload = message.payload
        result = (
            route
            if isinstance(route, Rejection)
            else normalize_message(route, payload, received_at, self._max_payload)
        )
        if isinstance(result, Rejection):
            self._reject(topic_bytes, payload, result, received_at, mid)
            return
        assert isinstance(route, Route)
        point, stamped = result
        key = (route.domain, route.source_id)
        batch = self._batches.get(key)
        if batch is None:
            batch = self._batches[key] = _Batch(route.domain, route.source_id, received_at)
            if self._linger > 0:
                batch.timer = self._loop.call_later(self._linger, self._flush, key)
        if mid:
            batch.mids.append(mid)
            if not stamped:
                point = self._keep_first_ts(batch, topic_bytes, payload, mid, point)
        batch.points.append(point)
        if len(batch.points) >= self._max_points or self._linger <= 0:
            self._flush(key)

    def _route(self, topic_bytes: bytes) -> Route | Rejection:
        try:
            topic = topic_bytes.decode()
        except UnicodeDecodeError:
            route: Route | Rejection = Rejection("topic", "topic is not valid UTF-8")
        else:
            route = parse_topic(topic, self._prefix, self._resolve_sensor)
        if len(self._routes) >= TOPIC_CACHE_SIZE:
            self._routes.clear()
        self._routes[topic_bytes] = route
        return route

    def forget_routes(self) -> None:
        """The device registry changed: topics are routed afresh from now on."""
        self._routes.clear()

    def _keep_first_ts(
        self, batch: _Batch, topic: bytes, payload: bytes, mid: int, point: DataPoint
    ) -> DataPoint:
        key = (topic, payload, mid)
        first = self._first_ts.get(key)
        if first is not None:
            point = with_ts(point, first)
        else:
            self._first_ts[key] = point.ts
            if len(self._first_ts) > 4 * self._max_in_flight:
                del self._first_ts[next(iter(self._first_ts))]
        batch.stamp_keys.append(key)
        return point

    def _reject(
        self, topic: bytes, payload: bytes, rejection: Rejection, received_at: datetime, mid: int
    ) -> None:
        MESSAGES_RECEIVED.inc()
        MESSAGES_REJECTED.labels(rejection.code).inc()
        message = encode_rejection(
            topic.decode(errors="replace"),
            payload,
            rejection,
            received_at,
            self._rejected_subject,
            self._settings.rejected_excerpt_bytes,
        )
        self._spawn(self._publish_rejection(message, mid, self._gen))

    def _flush(self, key: tuple[str, str]) -> None:
        batch = self._batches.pop(key, None)
        if batch is None:
            return
        if batch.timer is not None:
            batch.timer.cancel()
        self._spawn(self._publish_batch(batch, self._gen))

    def flush_all(self) -> None:
        for key in list(self._batches):
            self._flush(key)

    def _spawn(self, coro: Any) -> None:
        task = self._loop.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    # -- publish path ---------------------------------------------------------------------
    def _subject(self, domain: str, source_id: str) -> str:
        subject = self._subjects.get((domain, source_id))
        if subject is None:
            if len(self._subjects) >= TOPIC_CACHE_SIZE:
                self._subjects.clear()
            subject = self._subjects[(domain, source_id)] = self._ns.raw_subject(domain, source_id)
        return subject

    async def _publish_batch(self, batch: _Batch, gen: int) -> None:
        MESSAGES_RECEIVED.inc(len(batch.points))
        encoded = encode_batches(
            batch.domain,
            batch.source_id,
            batch.received_at,
            batch.points,
            self._subject(batch.domain, batch.source_id),
            self._max_bytes,
            transport=Transport.MQTT,
        )
        started = time.perf_counter()
        results = await asyncio.gather(
            *(self._deliver(message, gen, "publish") for message in encoded)
        )
        if not all(results):
            return  # abandoned: the broker redelivers these messages to the next connection
        ACK_LATENCY.observe(time.perf_counter() - started)
        BATCHES_PUBLISHED.inc(len(encoded))
        POINTS_PUBLISHED.inc(len(batch.points))
        self._complete(gen, batch.mids)
        if batch.stamp_keys and gen == self._gen:
            for key in batch.stamp_keys:
                self._first_ts.pop(key, None)

    async def _publish_rejection(self, message: OutgoingMessage, mid: int, gen: int) -> None:
        if await self._deliver(message, gen, "publish_rejected"):
            self._complete(gen, (mid,) if mid else ())

    async def _deliver(self, message: OutgoingMessage, gen: int, stage: str) -> bool:
        """Publish until JetStream acks (True) or the delivering connection is gone (False)."""
        delay = RETRY_MIN_SECONDS
        while True:
            try:
                await self._publish(message.subject, message.payload, message.headers)
                return True
            except Exception as exc:
                kind = error_type(exc)
                ERRORS.labels(stage, kind).inc()
                self._warn("bus_unavailable", stage=stage, error_type=kind, detail=repr(exc))
            if gen != self._gen:
                return False
            await asyncio.sleep(delay * random.uniform(0.5, 1.5))
            delay = min(delay * 2, RETRY_MAX_SECONDS)
            if gen != self._gen:
                return False

    def _complete(self, gen: int, mids: Sequence[int]) -> None:
        """JetStream acked the publish holding ``mids``: PUBACK every message now in order."""
        if gen != self._gen or self._acker is None:
            return
        order, done, ack = self._order, self._done, self._acker.ack
        done.update(mids)
        acked = 0
        while order and order[0] in done:
            mid = order.popleft()
            done.discard(mid)
            ack(mid)
            acked += 1
        if acked:
            MESSAGES_ACKED.inc(acked)
        if self._paused and len(order) <= self._max_in_flight:
            self._paused = False
            self._acker.resume_reading()

    async def drain(self, timeout: float) -> bool:
        """Publish what is batched and wait (≤ ``timeout``) until it is acked; True if all was."""
        self.flush_all()
        deadline = time.monotonic() + timeout
        while self._tasks and time.monotonic() < deadline:
            await asyncio.wait(set(self._tasks), timeout=deadline - time.monotonic())
        return not self._tasks


def jetstream_publisher(js: Any, timeout: float) -> Publish:
    """``Publish`` over nats-py: ``publish_async`` (pipelined) and the PubAck awaited."""

    async def publish(subject: str, payload: bytes, headers: dict[str, str]) -> Any:
        future = await js.publish_async(subject, payload, wait_stall=timeout, headers=headers)
        done, _ = await asyncio.wait((future,), timeout=timeout)
        if not done:
            future.cancel()
            raise TimeoutError("no PubAck within the publish timeout")
        return future.result()

    return publish
