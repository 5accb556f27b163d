"""Delivery around ``classify_batch``: raw messages in, classified publishes out, then acks.

For the raw messages of one call (one per call in the service, see ``app.py``):

1. a message delivered ``MAX_DELIVER`` times or more, or one that is not a valid PointBatch,
   is a dead letter: its payload, unchanged, published to ``dp.dlq.classifier`` with the
   contract's ``Tributary-Dlq-*`` headers (awaited), then acked;
2. every other message is classified and split by class; all its ClassifiedBatches and the
   alert events it caused (``dp.alert.>``) are published with ``publish_async`` and their acks
   awaited together;
3. with them goes the checkpoint document of its source when the input changed a stream's run
   or alert (``Checkpointer.writes_of``: one KV put per input at most, coalesced across the
   concurrent calls of one loop turn);
4. an input is acked only when every one of its outputs and its checkpoint were acked by
   JetStream; otherwise it is nak'ed with a growing delay and comes back (outputs that did get
   through are dropped as duplicates by their ``Nats-Msg-Id``; its points are then duplicates
   for the stream state, and alert events still unacknowledged are published again).

Each raw message is parsed here, not by FastStream, so one bad message never fails its neighbours.
Parsing and classification run without an ``await``, so concurrent calls see the per-stream
state in delivery order.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from time import perf_counter, time
from typing import TYPE_CHECKING, Any, Protocol

import structlog
from nats.aio.msg import Msg
from pydantic import ValidationError

from classifier.alerts import KeyedEvent, event_msg_id, staleness_events
from classifier.classify import Classified, ClassifierState, ConfigResolver, classify_message
from classifier.encode import classified_batch_json, parse_batch
from classifier.metrics import (
    ALERT_EVENTS,
    BATCH_SECONDS,
    CHECKPOINT_WRITES,
    DLQ_MESSAGES,
    ERRORS,
    OTHER_PARTITION_MESSAGES,
    PUBLISHED_POINTS,
    RECEIVED_MESSAGES,
    RECEIVED_POINTS,
    SHADOW_BATCHES,
    STATE_STREAMS,
)
from classifier.state import PendingEvent, StreamKey
from tributary_contracts import (
    CLASSIFIER_DURABLE,
    DP_CLASSIFIED,
    DP_DLQ,
    DP_EVENTS,
    DP_SHADOW,
    MAX_DELIVER,
    MSG_ID_HEADER,
    Namespace,
    PointBatch,
    PointClass,
    batch_msg_id,
    dead_letter_headers,
)
from tributary_runtime.redelivery import backoff_delay, deliveries

if TYPE_CHECKING:
    from classifier.checkpoint import Checkpointer
    from classifier.rollout import RolloutFollower

log = structlog.get_logger(__name__)

CHECKPOINT = "checkpoint"
"""Kind of an output that is a source's state checkpoint (a KV put)."""
SHADOW = "shadow"
"""Kind of an output that is a ShadowBatch (classifier.rollout)."""


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish on JetStream."""

    subject: str
    payload: bytes | Callable[[], bytes]
    """The body, or a function that makes it when it is sent (a checkpoint: the stream's state
    at send time, so the last write sent is always the newest state)."""
    headers: dict[str, str]
    stream: str | None = None
    """Expected stream (``Nats-Expected-Stream``): a publish landing elsewhere fails."""
    coalesce: str | None = None
    """Messages with the same key published together are sent once (a source's checkpoint)."""


class Outbox(Protocol):
    """Where the handler publishes; raises or reports failures, never drops them."""

    async def publish_all(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        """Publish all, wait for all acks together; per message None or the failure."""
        ...

    async def publish(self, message: Outgoing) -> None:
        """Publish one message and wait for its ack (raises on failure)."""
        ...


class JetStreamOutbox:
    """``Outbox`` on nats-py's JetStream: ``publish_async`` with the acks awaited together."""

    def __init__(self, js: Any, timeout: float) -> None:
        self._js = js
        self._timeout = timeout

    async def publish_all(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        results: list[BaseException | None] = [None] * len(messages)
        futures: list[asyncio.Future[Any] | None] = []
        for i, m in enumerate(messages):
            future: asyncio.Future[Any] | None
            try:
                future = await self._js.publish_async(
                    m.subject,
                    m.payload() if callable(m.payload) else m.payload,
                    wait_stall=self._timeout,
                    stream=m.stream,
                    headers=dict(m.headers),
                )
            except Exception as error:  # stalled, or the connection is closed
                results[i] = error
                future = None
            futures.append(future)
        pending = [f for f in futures if f is not None]
        if pending:
            _, not_done = await asyncio.wait(pending, timeout=self._timeout)
            for late in not_done:
                late.cancel()
        for i, f in enumerate(futures):
            if f is None:
                continue
            if f.cancelled():
                results[i] = TimeoutError(f"no publish ack within {self._timeout} s")
            else:
                results[i] = f.exception()
        return results

    async def publish(self, message: Outgoing) -> None:
        payload = message.payload
        await self._js.publish(
            message.subject,
            payload() if callable(payload) else payload,
            timeout=self._timeout,
            stream=message.stream,
            headers=dict(message.headers),
        )


class CoalescingOutbox:
    """Gathers the ``publish_all`` calls of one event-loop turn into one group.

    Calls made in the same loop turn (the settle task of a fetch, a staleness check, a
    checkpoint flush) are sent together, and messages with the same ``coalesce`` key (the
    checkpoint of a source touched by several inputs) are sent once, with the body made at send
    time: the source's newest state covers every caller. Groups of different turns are in
    flight at the same time (the consume loop pipelines fetches); each is sent in one go, in
    turn order, so a later write of a checkpoint is always sent after an earlier one.
    """

    def __init__(self, inner: Outbox) -> None:
        self.inner = inner
        self._queued: list[tuple[Sequence[Outgoing], asyncio.Future[list[BaseException | None]]]]
        self._queued = []
        self._flushing: set[asyncio.Task[None]] = set()
        self._scheduled = False

    async def publish_all(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        if not messages:
            return []
        future: asyncio.Future[list[BaseException | None]]
        future = asyncio.get_running_loop().create_future()
        self._queued.append((messages, future))
        if not self._scheduled:
            self._scheduled = True
            task = asyncio.create_task(self._flush(), name="classifier-publish-group")
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the other calls of this loop turn join
        group, self._queued = self._queued, []
        self._scheduled = False
        unique: list[Outgoing] = []
        slots: list[list[int]] = []
        by_key: dict[str, int] = {}
        for messages, _ in group:
            positions = []
            for m in messages:
                if m.coalesce is not None and m.coalesce in by_key:
                    positions.append(by_key[m.coalesce])
                    continue
                if m.coalesce is not None:
                    by_key[m.coalesce] = len(unique)
                positions.append(len(unique))
                unique.append(m)
            slots.append(positions)
        try:
            results = await self.inner.publish_all(unique)
        except Exception as exc:  # never leave a caller waiting
            results = [exc] * len(unique)
        for (_, future), positions in zip(group, slots, strict=True):
            if not future.done():
                future.set_result([results[i] for i in positions])

    async def publish(self, message: Outgoing) -> None:
        await self.inner.publish(message)


@dataclass
class Outcome:
    """What became of each raw message of one fetch (returned for tests and logs)."""

    acked: list[Msg] = field(default_factory=list)
    nacked: list[Msg] = field(default_factory=list)
    dead_lettered: list[tuple[Msg, str]] = field(default_factory=list)
    skipped: list[Msg] = field(default_factory=list)
    """Acked without output: another partition's."""


@dataclass(slots=True)
class _Classified:
    msg: Msg
    deliveries: int
    outputs: list[tuple[Outgoing, str, int]]  # message, class or event kind, point count
    touched: set[StreamKey] = field(default_factory=set)


@dataclass(slots=True)
class Prepared:
    """The messages of one fetch, classified and ready to publish (``RawBatchHandler.prepare``)."""

    started: float
    classified: list[_Classified] = field(default_factory=list)
    dead: list[tuple[Msg, int, str, str]] = field(default_factory=list)
    """(message, deliveries, kind, reason) of the dead letters."""
    retry: list[tuple[Msg, int]] = field(default_factory=list)
    others: list[Msg] = field(default_factory=list)
    """Messages of another partition: acked without output."""


class RawBatchHandler:
    """Handles fetched ``dp.raw.>`` messages: classify, publish, dead-letter, ack or nak."""

    def __init__(
        self,
        ns: Namespace,
        resolve_config: ConfigResolver,
        outbox: Outbox,
        state: ClassifierState | None = None,
        *,
        checkpointer: Checkpointer | None = None,
        nak_delay: float = 1.0,
        nak_max_delay: float = 60.0,
        max_deliver: int = MAX_DELIVER,
        owns_subject: Callable[[str], bool] | None = None,
        rollouts: RolloutFollower | None = None,
        live_resolve: ConfigResolver | None = None,
    ) -> None:
        self.ns = ns
        self.resolve_config = resolve_config
        self.outbox = outbox
        self.state = state if state is not None else ClassifierState()
        self.checkpointer = checkpointer
        self.nak_delay = nak_delay
        self.nak_max_delay = nak_max_delay
        self.max_deliver = max_deliver
        self.owns_subject = owns_subject
        """With partitions: whether a raw message's subject is this partition's to classify."""
        self.rollouts = rollouts
        """Canary rollouts: shadow verdicts of their sources go out with the outputs."""
        self.live_resolve = live_resolve or resolve_config
        self.shadow_stream = ns.stream(DP_SHADOW)
        self.dlq_subject = ns.dlq_subject(CLASSIFIER_DURABLE)
        self.classified_stream = ns.stream(DP_CLASSIFIED)
        self.dlq_stream = ns.stream(DP_DLQ)
        self.events_stream = ns.stream(DP_EVENTS)

    async def handle(self, msgs: Sequence[Msg]) -> Outcome:
        """Classify and publish ``msgs``, then ack, nak or dead-letter each of them."""
        return await self.settle(self.prepare(msgs))

    def prepare(self, msgs: Sequence[Msg]) -> Prepared:
        """Parse and classify ``msgs`` (advancing the stream state), without any ``await``.

        The consume loop calls this for each fetch in delivery order, then settles the fetches
        concurrently: the state sees the points in order even while earlier fetches still wait
        for their publish acks.
        """
        prepared = Prepared(perf_counter())
        owns = self.owns_subject
        if owns is not None:
            mine = [m for m in msgs if owns(m.subject)]
            if len(mine) < len(msgs):
                prepared.others = [m for m in msgs if not owns(m.subject)]
                OTHER_PARTITION_MESSAGES.inc(len(prepared.others))
            msgs = mine
        RECEIVED_MESSAGES.inc(len(msgs))
        for msg in msgs:
            delivered = deliveries(msg)
            if delivered >= self.max_deliver:
                prepared.dead.append(
                    (msg, delivered, "max_deliver", f"delivered {delivered} times")
                )
                continue
            try:
                batch = parse_batch(msg.data)
            except ValidationError as exc:
                prepared.dead.append((msg, delivered, "invalid_batch", _describe(exc)))
                continue
            RECEIVED_POINTS.inc(len(batch.points))
            try:
                classified_at = datetime.now(UTC)
                result = classify_message(
                    batch, self.resolve_config, self.state, classified_at, time()
                )
                outputs = [
                    self._outgoing(batch, cls, classified_at, points)
                    for cls, points in result.by_class.items()
                ]
                self._add_events(result.events, result.republish, outputs)
                if self.rollouts is not None:
                    outputs.extend(self.rollouts.shadow_outputs(
                        self.ns, batch, result, classified_at, self.live_resolve,
                        self.shadow_stream,
                    ))
                if self.checkpointer is not None:
                    outputs.extend(
                        (write, CHECKPOINT, 0)
                        for write in self.checkpointer.writes_of(result.touched)
                    )
            except Exception as exc:  # a defect, not bad data: retried, dead-lettered at the end
                ERRORS.labels(stage="classify", error_type=type(exc).__name__).inc()
                log.exception("classification failed", subject=msg.subject)
                prepared.retry.append((msg, delivered))
                continue
            prepared.classified.append(
                _Classified(msg, delivered, outputs, result.touched | result.republish)
            )
        return prepared

    async def settle(self, prepared: Prepared) -> Outcome:
        """Publish what ``prepare`` made, then ack, nak or dead-letter each message."""
        outcome = Outcome()
        for msg in prepared.others:  # another partition classifies it (its own durable)
            if await self._ack(msg):
                outcome.skipped.append(msg)
        retry = prepared.retry
        await self._publish_and_ack(prepared.classified, outcome, retry)
        for msg, delivered, reason, detail in prepared.dead:
            await self._dead_letter(msg, delivered, reason, detail, outcome, retry)
        for msg, delivered in retry:
            await self._nak(msg, delivered, outcome)
        BATCH_SECONDS.observe(perf_counter() - prepared.started)
        return outcome

    def _outgoing(
        self,
        batch: PointBatch,
        cls: PointClass,
        classified_at: datetime,
        points: list[Classified],
    ) -> tuple[Outgoing, str, int]:
        cls_name = str(cls)
        msg_id = batch_msg_id(
            batch.domain, batch.source_id, [(p.stream_id, p.ts) for p, _, _ in points], cls_name
        )
        message = Outgoing(
            self.ns.classified_subject(batch.domain, cls_name, batch.source_id),
            classified_batch_json(batch, cls, classified_at, points),
            {MSG_ID_HEADER: msg_id},
            self.classified_stream,
        )
        return message, cls_name, len(points)

    def _add_events(
        self,
        events: list[KeyedEvent],
        republish: set[StreamKey],
        outputs: list[tuple[Outgoing, str, int]],
    ) -> None:
        """Append alert events to ``outputs``: the new ones (remembered as pending until acked)
        and those still pending on the ``republish`` streams (a redelivered input: the publish
        that made them may have failed)."""
        streams = self.state.streams
        again = set(republish)
        for key, event in events:
            subject = self.ns.alert_subject(event.domain, str(event.severity), event.source_id)
            pending = PendingEvent(event_msg_id(event), subject, event.model_dump_json().encode())
            streams[key].pending.append(pending)
            outputs.append(
                (
                    Outgoing(
                        subject,
                        pending.payload,
                        {MSG_ID_HEADER: pending.msg_id},
                        self.events_stream,
                    ),
                    str(event.event),
                    0,
                )
            )
        for key in again:
            st = streams.get(key)
            if st is None or not st.pending:
                continue
            for pending in st.pending:
                kind = pending.msg_id.rpartition(":")[2]
                message = Outgoing(
                    pending.subject,
                    pending.payload,
                    {MSG_ID_HEADER: pending.msg_id},
                    self.events_stream,
                )
                outputs.append((message, kind, 0))

    def _forget_published_events(self, item: _Classified) -> None:
        acked = {
            m.headers[MSG_ID_HEADER]
            for m, kind, count in item.outputs
            if count == 0 and kind != CHECKPOINT
        }
        if not acked:
            return
        streams = self.state.streams
        for key in item.touched:
            st = streams.get(key)
            if st is not None and st.pending:
                st.pending = [p for p in st.pending if p.msg_id not in acked]
                # The checkpoint sent with them still lists them: rewrite it in the next flush.
                self.state.dirty.add(key)

    async def check_staleness(self, limit: int = 1000) -> int:
        """Open staleness alerts on silent streams, publish them, checkpoint; the count."""
        events = staleness_events(self.state, time(), datetime.now(UTC), limit)
        if not events:
            return 0
        touched = {key for key, _ in events}
        outputs: list[tuple[Outgoing, str, int]] = []
        self._add_events(events, set(), outputs)
        results = await self.outbox.publish_all([m for m, _, _ in outputs])
        item = _Classified(None, 0, outputs, touched)  # type: ignore[arg-type]
        if all(e is None for e in results):
            self._forget_published_events(item)
            for _, kind, _ in outputs:
                ALERT_EVENTS.labels(event=kind).inc()
        else:
            # Still pending: published again with the stream's next point or next check.
            ERRORS.labels(stage="publish", error_type="staleness").inc()
        if self.checkpointer is not None:
            await self.checkpointer.save(touched)
        return len(events)

    async def _publish_and_ack(
        self, classified: list[_Classified], outcome: Outcome, retry: list[tuple[Msg, int]]
    ) -> None:
        flat = [out for item in classified for out in item.outputs]
        if not flat:
            return
        results = await self.outbox.publish_all([message for message, _, _ in flat])
        position = 0
        for item in classified:
            errors = results[position : position + len(item.outputs)]
            position += len(item.outputs)
            failed = False
            for (_, cls, count), error in zip(item.outputs, errors, strict=True):
                if error is None:
                    if count:
                        PUBLISHED_POINTS.labels(cls=cls).inc(count)
                    elif cls == CHECKPOINT:
                        CHECKPOINT_WRITES.inc()
                    elif cls == SHADOW:
                        SHADOW_BATCHES.inc()
                    else:
                        ALERT_EVENTS.labels(event=cls).inc()
                else:
                    failed = True
                    ERRORS.labels(stage="publish", error_type=type(error).__name__).inc()
            if failed:
                log.warning(
                    "classified publish failed; input will be redelivered",
                    subject=item.msg.subject,
                    deliveries=item.deliveries,
                    error=repr(next(e for e in errors if e is not None)),
                )
                retry.append((item.msg, item.deliveries))
                continue
            self._forget_published_events(item)
            if await self._ack(item.msg):
                outcome.acked.append(item.msg)
        STATE_STREAMS.set(len(self.state))

    async def _dead_letter(
        self,
        msg: Msg,
        deliveries: int,
        reason: str,
        detail: str,
        outcome: Outcome,
        retry: list[tuple[Msg, int]],
    ) -> None:
        # The contract's format: the refused payload as the body, unchanged, so it can be
        # republished as is; why and where in headers, with a deterministic Nats-Msg-Id so a
        # retried dead-letter publish is deduplicated.
        headers = dead_letter_headers(
            CLASSIFIER_DURABLE, reason, detail, msg.subject, deliveries, msg.data
        )
        try:
            await self.outbox.publish(
                Outgoing(self.dlq_subject, msg.data, headers, self.dlq_stream)
            )
        except Exception as exc:
            ERRORS.labels(stage="dlq", error_type=type(exc).__name__).inc()
            log.warning(
                "dead-letter publish failed; message will be redelivered",
                subject=msg.subject,
                reason=reason,
                error=repr(exc),
            )
            retry.append((msg, deliveries))
            return
        DLQ_MESSAGES.labels(reason=reason).inc()
        log.warning(
            "message sent to the dead-letter subject",
            subject=msg.subject,
            reason=reason,
            detail=detail[:300],
            deliveries=deliveries,
        )
        if await self._ack(msg):
            outcome.dead_lettered.append((msg, reason))

    async def _ack(self, msg: Msg) -> bool:
        try:
            await msg.ack()
        except Exception as exc:  # connection lost: the message is redelivered, deduplicated
            ERRORS.labels(stage="ack", error_type=type(exc).__name__).inc()
            return False
        return True

    async def _nak(self, msg: Msg, deliveries: int, outcome: Outcome) -> None:
        delay = backoff_delay(deliveries, self.nak_delay, self.nak_max_delay)
        try:
            await msg.nak(delay=delay)
        except Exception as exc:  # connection lost: ack_wait redelivers it anyway
            ERRORS.labels(stage="nak", error_type=type(exc).__name__).inc()
            return
        outcome.nacked.append(msg)



def _describe(exc: ValidationError) -> str:
    """The first few validation errors as one line: ``points.3.value: Input should be…``."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        location = ".".join(str(p) for p in error["loc"])
        parts.append(f"{location}: {error['msg']}" if location else error["msg"])
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
