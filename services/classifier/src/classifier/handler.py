"""Delivery around ``classify_message``: raw bundles in, classified bundles out, then acks.

One handler per bus partition it owns (``app.py``). For the raw messages of one fetch:

1. a message delivered ``MAX_DELIVER`` times or more, or one that is not a valid
   ``PointBundle`` of this partition (or, on a former per-source subject, a valid
   ``PointBatch``), is a dead letter: its payload, unchanged, published to
   ``dp.dlq.classifier`` with the contract's ``Tributary-Dlq-*`` headers (awaited), then acked;
2. every other message is classified batch by batch, in order, and split by class: one
   ``ClassifiedBundle`` per class on ``dp.classified.<domain>.<cls>.part.<p>``, holding one
   ``ClassifiedBatch`` per input batch that has points of that class; with them the alert
   events it caused (``dp.alert.>``), all published with ``publish_async`` and their acks
   awaited together;
3. with them goes the checkpoint document of each source whose run of violations or alert the
   input changed (``Checkpointer.writes_of``, coalesced across the calls of one loop turn);
4. an input is acked only when every one of its outputs and checkpoints were acked by
   JetStream; otherwise it is nak'ed with a growing delay and comes back (outputs that did get
   through are dropped as duplicates by their ``Nats-Msg-Id``; its points are then duplicates
   for the stream state, and alert events still unacknowledged are published again).

A message of a former per-source subject whose source belongs to another partition is acked
without output (another partition's drain classifies it). Parsing and classification run
without an ``await``, so the per-stream state sees the points in delivery order.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from time import perf_counter, time

import structlog
from nats.aio.msg import Msg
from pydantic import ValidationError

from classifier.alerts import KeyedEvent, event_msg_id, staleness_events
from classifier.checkpoint import Checkpointer
from classifier.classify import ClassifierState, ConfigResolver, classify_message
from classifier.encode import RawInput, classified_bundle_json, parse_raw
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
    STATE_STREAMS,
)
from classifier.outbox import Outbox, Outgoing
from classifier.state import PendingEvent, StreamKey
from classifier.verdict import Classified
from tributary_contracts import (
    CLASSIFIER_DURABLE,
    DP_CLASSIFIED,
    DP_DLQ,
    DP_EVENTS,
    MAX_DELIVER,
    MSG_ID_HEADER,
    Namespace,
    PointBatch,
    PointClass,
    batch_msg_id,
    bundle_msg_id,
    dead_letter_headers,
    partition_of,
)
from tributary_runtime.redelivery import backoff_delay, deliveries

log = structlog.get_logger(__name__)


class OutputKind(StrEnum):
    """What an output of an input is."""

    POINTS = "points"
    """A ClassifiedBundle (``label``: its class)."""
    EVENT = "event"
    """An alert event (``label``: opened, escalated or closed)."""
    CHECKPOINT = "checkpoint"
    """A source's state checkpoint (a KV put)."""


@dataclass(frozen=True, slots=True)
class Output:
    """One message an input makes, and what it is (for the metrics and the pending events)."""

    message: Outgoing
    kind: OutputKind
    label: str
    points: int = 0


@dataclass
class Outcome:
    """What became of each raw message of one fetch (returned for tests and logs)."""

    acked: list[Msg] = field(default_factory=list)
    nacked: list[Msg] = field(default_factory=list)
    dead_lettered: list[tuple[Msg, str]] = field(default_factory=list)
    skipped: list[Msg] = field(default_factory=list)
    """Acked without output: a former per-source message of another partition's source."""


@dataclass(slots=True)
class _Classified:
    msg: Msg | None
    deliveries: int
    outputs: list[Output]
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
    """Former per-source messages of another partition: acked without output."""


class RawBatchHandler:
    """Handles the fetched ``dp.raw`` messages of one partition: classify, publish, dead-letter,
    ack or nak."""

    def __init__(
        self,
        ns: Namespace,
        resolve_config: ConfigResolver,
        outbox: Outbox,
        state: ClassifierState | None = None,
        *,
        partition: int = 0,
        partitions: int = 1,
        checkpointer: Checkpointer | None = None,
        nak_delay: float = 1.0,
        nak_max_delay: float = 60.0,
        max_deliver: int = MAX_DELIVER,
    ) -> None:
        self.ns = ns
        self.resolve_config = resolve_config
        self.outbox = outbox
        self.state = state if state is not None else ClassifierState()
        self.partition = partition
        self.partitions = partitions
        self.checkpointer = checkpointer
        self.nak_delay = nak_delay
        self.nak_max_delay = nak_max_delay
        self.max_deliver = max_deliver
        self.dlq_subject = ns.dlq_subject(CLASSIFIER_DURABLE)
        self.classified_stream = ns.stream(DP_CLASSIFIED)
        self.dlq_stream = ns.stream(DP_DLQ)
        self.events_stream = ns.stream(DP_EVENTS)
        self._raw_prefix = ns.all_raw()[:-1]  # "<prefix.>dp.raw."
        self._source_partition: dict[tuple[str, str], int] = {}

    async def handle(self, msgs: Sequence[Msg]) -> Outcome:
        """Classify and publish ``msgs``, then ack, nak or dead-letter each of them."""
        return await self.settle(self.prepare(msgs))

    def partition_of(self, domain: str, source_id: str) -> int:
        """``tributary_contracts.partition_of`` with this handler's count, remembered."""
        key = (domain, source_id)
        found = self._source_partition.get(key)
        if found is None:
            if len(self._source_partition) >= 100_000:
                self._source_partition.clear()
            found = self._source_partition[key] = partition_of(domain, source_id, self.partitions)
        return found

    def prepare(self, msgs: Sequence[Msg]) -> Prepared:
        """Parse and classify ``msgs`` (advancing the stream state), without any ``await``.

        The consume loop calls this for each fetch in delivery order, then settles the fetches
        concurrently: the state sees the points in order even while earlier fetches still wait
        for their publish acks.
        """
        prepared = Prepared(perf_counter())
        RECEIVED_MESSAGES.inc(len(msgs))
        for msg in msgs:
            delivered = deliveries(msg)
            if delivered >= self.max_deliver:
                prepared.dead.append(
                    (msg, delivered, "max_deliver", f"delivered {delivered} times")
                )
                continue
            try:
                raw = parse_raw(msg.data, former=self._is_former(msg.subject))
            except ValidationError as exc:
                prepared.dead.append((msg, delivered, "invalid_batch", _describe(exc)))
                continue
            problem = self._misplaced(raw)
            if problem is not None:
                if raw.former:  # another partition's drain classifies it
                    prepared.others.append(msg)
                    continue
                prepared.dead.append((msg, delivered, "wrong_partition", problem))
                continue
            try:
                outputs, touched = self._classify(raw)
            except Exception as exc:  # a defect, not bad data: retried, dead-lettered at the end
                ERRORS.labels(stage="classify", error_type=type(exc).__name__).inc()
                log.exception("classification failed", subject=msg.subject)
                prepared.retry.append((msg, delivered))
                continue
            prepared.classified.append(_Classified(msg, delivered, outputs, touched))
        if prepared.others:
            OTHER_PARTITION_MESSAGES.inc(len(prepared.others))
        return prepared

    def _is_former(self, subject: str) -> bool:
        """A former per-source subject ``dp.raw.<domain>.<source>`` (four tokens)."""
        return subject[len(self._raw_prefix) :].count(".") == 1

    def _misplaced(self, raw: RawInput) -> str | None:
        """Why ``raw`` is not this partition's to classify (None when it is)."""
        if not raw.former and raw.partition != self.partition:
            return f"bundle of partition {raw.partition} delivered to partition {self.partition}"
        for batch in raw.batches:
            if batch.domain != raw.domain:
                return f"batch of domain {batch.domain!r} in a bundle of domain {raw.domain!r}"
            owner = self.partition_of(batch.domain, batch.source_id)
            if owner != self.partition:
                return (
                    f"source {batch.source_id!r} hashes to partition {owner} of "
                    f"{self.partitions}, not {self.partition}: do the gateways use another "
                    f"BUS_PARTITIONS?"
                )
        return None

    def _classify(self, raw: RawInput) -> tuple[list[Output], set[StreamKey]]:
        """Classify every batch of ``raw`` in order; its outputs and the streams to checkpoint."""
        classified_at = datetime.now(UTC)
        wall = time()
        groups: dict[PointClass, list[tuple[PointBatch, list[Classified]]]] = {}
        events: list[KeyedEvent] = []
        touched: set[StreamKey] = set()
        republish: set[StreamKey] = set()
        for batch in raw.batches:
            RECEIVED_POINTS.inc(len(batch.points))
            result = classify_message(batch, self.resolve_config, self.state, classified_at, wall)
            for cls, points in result.by_class.items():
                members = groups.get(cls)
                if members is None:
                    groups[cls] = [(batch, points)]
                else:
                    members.append((batch, points))
            events.extend(result.events)
            touched |= result.touched
            republish |= result.republish
        outputs = [
            self._outgoing(raw.domain, cls, classified_at, members)
            for cls, members in groups.items()
        ]
        self._add_events(events, republish, outputs)
        if self.checkpointer is not None:
            outputs.extend(
                Output(write, OutputKind.CHECKPOINT, "checkpoint")
                for write in self.checkpointer.writes_of(touched)
            )
        return outputs, touched | republish

    async def settle(self, prepared: Prepared) -> Outcome:
        """Publish what ``prepare`` made, then ack, nak or dead-letter each message."""
        outcome = Outcome()
        for msg in prepared.others:  # another partition's drain classifies it
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
        domain: str,
        cls: PointClass,
        classified_at: datetime,
        members: list[tuple[PointBatch, list[Classified]]],
    ) -> Output:
        cls_name = str(cls)
        msg_id = bundle_msg_id(
            batch_msg_id(
                batch.domain,
                batch.source_id,
                [(p.stream_id, p.ts) for p, _, _ in points],
                cls_name,
            )
            for batch, points in members
        )
        message = Outgoing(
            self.ns.classified_partition_subject(domain, cls_name, self.partition),
            classified_bundle_json(domain, cls, self.partition, classified_at, members),
            {MSG_ID_HEADER: msg_id},
            self.classified_stream,
        )
        return Output(message, OutputKind.POINTS, cls_name, sum(len(p) for _, p in members))

    def _add_events(
        self, events: list[KeyedEvent], republish: set[StreamKey], outputs: list[Output]
    ) -> None:
        """Append alert events to ``outputs``: the new ones (remembered as pending until acked)
        and those still pending on the ``republish`` streams (a redelivered input: the publish
        that made them may have failed)."""
        streams = self.state.streams
        for key, event in events:
            subject = self.ns.alert_subject(event.domain, str(event.severity), event.source_id)
            pending = PendingEvent(
                event_msg_id(event), subject, event.model_dump_json().encode(), str(event.event)
            )
            streams[key].pending.append(pending)
            outputs.append(self._event_output(pending))
        for key in republish:
            st = streams.get(key)
            if st is not None:
                outputs.extend(self._event_output(pending) for pending in st.pending)

    def _event_output(self, pending: PendingEvent) -> Output:
        message = Outgoing(
            pending.subject, pending.payload, {MSG_ID_HEADER: pending.msg_id}, self.events_stream
        )
        return Output(message, OutputKind.EVENT, pending.kind)

    def _forget_published_events(self, item: _Classified) -> None:
        events = (o for o in item.outputs if o.kind is OutputKind.EVENT)
        acked = {o.message.headers[MSG_ID_HEADER] for o in events}
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
        outputs: list[Output] = []
        self._add_events(events, set(), outputs)
        results = await self.outbox.publish_all([o.message for o in outputs])
        item = _Classified(None, 0, outputs, touched)
        if all(e is None for e in results):
            self._forget_published_events(item)
            for output in outputs:
                ALERT_EVENTS.labels(event=output.label).inc()
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
        results = await self.outbox.publish_all([o.message for o in flat])
        position = 0
        for item in classified:
            assert item.msg is not None
            errors = results[position : position + len(item.outputs)]
            position += len(item.outputs)
            failed = False
            for output, error in zip(item.outputs, errors, strict=True):
                if error is None:
                    _count(output)
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
        STATE_STREAMS.labels(partition=str(self.partition)).set(len(self.state))

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


def _count(output: Output) -> None:
    if output.kind is OutputKind.POINTS:
        PUBLISHED_POINTS.labels(cls=output.label).inc(output.points)
    elif output.kind is OutputKind.CHECKPOINT:
        CHECKPOINT_WRITES.inc()
    else:
        ALERT_EVENTS.labels(event=output.label).inc()


def _describe(exc: ValidationError) -> str:
    """The first few validation errors as one line: ``points.3.value: Input should be…``."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        location = ".".join(str(p) for p in error["loc"])
        parts.append(f"{location}: {error['msg']}" if location else error["msg"])
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
