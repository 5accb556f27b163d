"""Received MQTT messages → the gateway's ``Coalescer`` (bundles) → PUBACKs in receipt order.

Consumes received PUBLISHes (``gateway_mqtt.mqtt.Message``, from ``MqttConnection``) and hands each
message's point to the ``Coalescer``, which publishes it in the ``PointBundle`` of its (domain,
partition) on ``dp.raw.<domain>.part.<p>`` within ``bundle_linger_ms``; a bad message becomes one
``RejectedInput`` on ``dp.rejected.mqtt``. A QoS 1 message is acknowledged to the broker only after
JetStream acked the bundle that holds it, and PUBACKs go out in the order the messages arrived (MQTT
4.6: a later message's bundle may be acked first; its PUBACK waits for the earlier ones).

A failed publish is retried with backoff for as long as the MQTT connection that delivered its
messages lasts; once that connection is gone the broker redelivers them to the next one (same
idempotency keys), so the old submission is abandoned. The number of unacked
messages is bounded by the broker (MQTT 5 receive maximum = ``max_in_flight``) and, should a
broker send more, by pausing reads.

A message without a timestamp gets its receive time. To keep a broker redelivery (DUP) of such a
message idempotent, the first receive time is remembered per (topic, payload, packet id) until
the message is acked; this covers reconnects within one process, not a crash (see README).
"""

from __future__ import annotations

import asyncio
import functools
import random
import time
from collections import deque
from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog

from gateway_mqtt.metrics import (
    ACK_LATENCY,
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
from tributary_contracts import DataPoint, RejectedEntry, RejectedInput, Transport
from tributary_ingest.batches import OutgoingMessage, PublishOutcome, rejected_message
from tributary_ingest.coalesce import Coalescer
from tributary_ingest.ledger import RawLedger
from tributary_runtime.logs import ThrottledWarning
from tributary_runtime.publish import PublishError

log = structlog.get_logger("gateway_mqtt")

TOPIC_CACHE_SIZE = 50_000
RETRY_MIN_SECONDS = 0.05
RETRY_MAX_SECONDS = 2.0


class Acker(Protocol):
    """The live broker connection, as the pipeline sees it."""

    def ack(self, mid: int) -> None: ...
    def pause_reading(self) -> None: ...
    def resume_reading(self) -> None: ...


class IncomingMessage(Protocol):
    """What the pipeline reads of a received PUBLISH (``gateway_mqtt.mqtt.Message``)."""

    mid: int
    qos: int
    dup: bool
    payload: bytes
    _topic: bytes


class _Message:
    """One received message on its way to the bus: its point (or rejection) and packet id."""

    __slots__ = ("domain", "mid", "point", "received_at", "rejection", "source_id", "stamp_key")

    def __init__(
        self,
        domain: str,
        source_id: str,
        received_at: datetime,
        mid: int,
        point: DataPoint | None,
        rejection: OutgoingMessage | None = None,
        stamp_key: tuple[bytes, bytes, int] | None = None,
    ) -> None:
        self.domain = domain
        self.source_id = source_id
        self.received_at = received_at
        self.mid = mid
        self.point = point
        self.rejection = rejection
        self.stamp_key = stamp_key


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
    """Everything between a received PUBLISH and its PUBACK (one per process)."""

    def __init__(
        self,
        settings: GatewayMqttSettings,
        coalescer: Coalescer,
        *,
        resolve_sensor: ResolveSensor | None = None,
        ledger: RawLedger | None = None,
    ) -> None:
        self._settings = settings
        self._ledger = ledger if ledger is not None and ledger.selector else None
        self._ledger_tasks: set[asyncio.Task[bool]] = set()
        self._resolve_sensor = resolve_sensor
        self._coalescer = coalescer
        self._prefix = settings.topic_prefix
        self._max_in_flight = settings.max_in_flight
        self._max_payload = settings.max_payload_bytes
        self._rejected_subject = settings.namespace.rejected_subject(Transport.MQTT.value)
        self._routes: dict[bytes, Route | Rejection] = {}
        self._order: deque[int] = deque()  # unacked QoS 1 packet ids, in receipt order
        self._done: set[int] = set()  # of those, the ones whose publish JetStream acked
        self._first_ts: dict[tuple[bytes, bytes, int], datetime] = {}
        self._outstanding = 0  # messages submitted (or waiting to retry), not yet answered
        self._idle = asyncio.Event()
        self._idle.set()
        self._acker: Acker | None = None
        self._gen = 0
        self._paused = False
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
        deliver again, so pending retries are dropped and late PubAcks ignored."""
        self._gen += 1
        self._acker = None
        self._order.clear()
        self._done.clear()

    @property
    def in_flight(self) -> int:
        return len(self._order)

    # -- receive path ---------------------------------------------------------------------
    def handle(self, message: IncomingMessage) -> None:
        """For each received PUBLISH: normalise, hand to the coalescer (or reject); never raises."""
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
        MESSAGES_RECEIVED.inc()
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
        if self._ledger is not None:
            self._record(route, result, payload, received_at)
        if isinstance(result, Rejection):
            self._reject(topic_bytes, payload, result, received_at, mid)
            return
        assert isinstance(route, Route)
        point, stamped = result
        stamp_key = None
        if mid and not stamped:
            point, stamp_key = self._keep_first_ts(topic_bytes, payload, mid, point)
        self._submit(
            _Message(route.domain, route.source_id, received_at, mid, point, None, stamp_key),
            self._gen,
            RETRY_MIN_SECONDS,
        )

    def _record(
        self, route: Route | Rejection, result: Any, payload: bytes, received_at: datetime
    ) -> None:
        """The raw ledger (``RAW_LEDGER``): the message and what came of it, best effort."""
        assert self._ledger is not None
        domain, source = route.domain, route.source_id
        if not self._ledger.wants(domain, source):
            return
        assert domain is not None and source is not None
        outcome: dict[str, Any] = (
            {"error": result.reason, "status": None}
            if isinstance(result, Rejection)
            else {"accepted": [result[0]]}
        )
        task = self._loop.create_task(
            self._ledger.record(domain, source, received_at, payload, **outcome)
        )
        self._ledger_tasks.add(task)
        task.add_done_callback(self._ledger_tasks.discard)

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
        self, topic: bytes, payload: bytes, mid: int, point: DataPoint
    ) -> tuple[DataPoint, tuple[bytes, bytes, int]]:
        key = (topic, payload, mid)
        first = self._first_ts.get(key)
        if first is not None:
            point = with_ts(point, first)
        else:
            self._first_ts[key] = point.ts
            if len(self._first_ts) > 4 * self._max_in_flight:
                del self._first_ts[next(iter(self._first_ts))]
        return point, key

    def _reject(
        self, topic: bytes, payload: bytes, rejection: Rejection, received_at: datetime, mid: int
    ) -> None:
        MESSAGES_REJECTED.labels(rejection.code).inc()
        message = encode_rejection(
            topic.decode(errors="replace"),
            payload,
            rejection,
            received_at,
            self._rejected_subject,
            self._settings.rejected_excerpt_bytes,
        )
        self._submit(
            _Message(
                rejection.domain or "", rejection.source_id or "", received_at, mid, None, message
            ),
            self._gen,
            RETRY_MIN_SECONDS,
        )

    # -- publish path ---------------------------------------------------------------------
    def _submit(self, message: _Message, gen: int, delay: float) -> None:
        if message.point is not None:
            future = self._coalescer.submit(
                message.domain, message.source_id, message.received_at, (message.point,)
            )
        else:
            assert message.rejection is not None
            future = self._coalescer.submit_encoded(
                message.domain, message.source_id, (), (message.rejection,)
            )
        if self._outstanding == 0:
            self._idle.clear()
        self._outstanding += 1
        future.add_done_callback(
            functools.partial(self._answered, message, gen, delay, time.perf_counter())
        )

    def _answered(
        self,
        message: _Message,
        gen: int,
        delay: float,
        started: float,
        future: asyncio.Future[PublishOutcome],
    ) -> None:
        self._outstanding -= 1
        rejection = message.point is None
        stage = "publish_rejected" if rejection else "publish"
        if future.cancelled():
            failure: BaseException | None = PublishError("timeout", "cancelled")
        else:
            failure = future.exception()
            if failure is None and rejection and not future.result().rejected_published:
                failure = PublishError("not_acked", "the rejection was not acknowledged")
        if failure is None:
            ACK_LATENCY.observe(time.perf_counter() - started)
            if not rejection:
                POINTS_PUBLISHED.inc()
            self._complete(gen, (message.mid,) if message.mid else ())
            if message.stamp_key is not None and gen == self._gen:
                self._first_ts.pop(message.stamp_key, None)
        elif gen == self._gen and not (
            isinstance(failure, PublishError) and failure.error_type == "closed"
        ):  # (closed: shutting down; the broker redelivers to the next process)
            kind = failure.error_type if isinstance(failure, PublishError) else "other"
            ERRORS.labels(stage, kind).inc()
            self._warn("bus_unavailable", stage=stage, error_type=kind, detail=str(failure))
            self._outstanding += 1  # retried after the backoff, unless the connection goes
            self._loop.call_later(
                delay * random.uniform(0.5, 1.5), self._retry, message, gen, delay
            )
        # else: abandoned, the broker redelivers this message to the next connection
        if self._outstanding == 0:
            self._idle.set()

    def _retry(self, message: _Message, gen: int, delay: float) -> None:
        self._outstanding -= 1
        if gen == self._gen:
            self._submit(message, gen, min(delay * 2, RETRY_MAX_SECONDS))
        elif self._outstanding == 0:
            self._idle.set()

    def _complete(self, gen: int, mids: Sequence[int]) -> None:
        """JetStream acked the bundle holding ``mids``: PUBACK every message now in order."""
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
        """Publish what is gathered and wait (≤ ``timeout``) until it is acked; True if all
        was."""
        self._coalescer.flush()
        try:
            await asyncio.wait_for(self._idle.wait(), timeout)
        except TimeoutError:
            return False
        return True
