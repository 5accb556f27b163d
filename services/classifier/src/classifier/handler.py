"""Delivery around ``classify_message``: raw bundles in, classified bundles and alert events out.

One handler per bus partition it owns (``app.py``). For the raw messages of one fetch,
``prepare`` (no ``await``, so the per-stream state sees the points in delivery order):

1. a message delivered ``MAX_DELIVER`` times or more, or one that is not a valid
   ``PointBundle`` of this partition (on a former per-source subject: a valid ``PointBatch``),
   or whose classification raised, becomes a dead letter (``tributary_runtime.delivery``,
   which states the fleet's delivery rules) published with the outputs;
2. every other message is classified batch by batch, in order, and split by class: one
   ``ClassifiedBundle`` per class on ``dp.classified.<domain>.<cls>.part.<p>``, holding one
   ``ClassifiedBatch`` per input batch with points of that class (``Nats-Msg-Id``: the
   ``bundle_msg_id`` of their ``batch_msg_id``s, so the same points always give the same id),
   plus the alert events it caused (``dp.alert.>``). A batch of a source whose state already
   holds this bundle (``ClassifierState.covered``: a redelivery) is skipped;
3. a former per-source message of a source of another partition is left to that partition's
   drain (no output).

``publish`` then sends the outputs (``tributary_runtime.publish.publish_until_acked``): an
output is never dropped while the process lives. The inputs are acked by the partition's next
snapshot, once their outputs and the state they produced are durable (``classifier.checkpoint``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from enum import StrEnum
from time import perf_counter, time
from typing import TYPE_CHECKING, NamedTuple

import structlog
from nats.aio.msg import Msg
from pydantic import ValidationError

from classifier.alerts import KeyedEvent, event_msg_id, staleness_events
from classifier.classify import ClassifierState, ConfigResolver, classify_message
from classifier.encode import RawInput, classified_bundle_json, parse_raw
from classifier.metrics import (
    ALERT_EVENTS,
    BATCH_SECONDS,
    DLQ,
    ERRORS,
    OTHER_PARTITION_MESSAGES,
    OVER_CAP_POINTS,
    PUBLISHED_POINTS,
    RECEIVED_MESSAGES,
    RECEIVED_POINTS,
    SHADOW_BATCHES,
    SKIPPED_BATCHES,
)
from classifier.outbox import Outbox
from classifier.state import SourceKey
from classifier.verdict import Classified
from tributary_contracts import (
    CLASSIFIER_DURABLE,
    DP_CLASSIFIED,
    DP_EVENTS,
    DP_SHADOW,
    MAX_DELIVER,
    MSG_ID_HEADER,
    AlertEvent,
    Namespace,
    PointBatch,
    PointClass,
    batch_msg_id,
    bundle_msg_id,
    partition_of,
)
from tributary_runtime.delivery import dead_letter, deliveries
from tributary_runtime.publish import Outgoing, publish_until_acked

if TYPE_CHECKING:
    from classifier.rollout import RolloutFollower

log = structlog.get_logger(__name__)


class OutputKind(StrEnum):
    """What an output of an input is."""

    POINTS = "points"
    """A ClassifiedBundle (``label``: its class)."""
    EVENT = "event"
    """An alert event (``label``: opened, escalated or closed)."""
    DEAD_LETTER = "dead_letter"
    """A refused input on ``dp.dlq.classifier`` (``label``: the reason kind)."""
    SHADOW = "shadow"
    """A ShadowBatch: live and shadow verdicts of a canary source (classifier.rollout)."""


@dataclass(frozen=True, slots=True)
class Output:
    """One message made from an input, and what it is (counted once JetStream acked it)."""

    message: Outgoing
    kind: OutputKind
    label: str
    points: int = 0


class Refusal(NamedTuple):
    """Why an input is dead-lettered instead of classified."""

    kind: str
    """The dead letter's kind (``Tributary-Dlq-Kind``): max_deliver, invalid_batch…"""
    detail: str


class DeadLettered(NamedTuple):
    """An input of a fetch that went to the DLQ, and its kind."""

    msg: Msg
    kind: str


@dataclass(slots=True)
class Prepared:
    """The messages of one fetch, classified (``RawBatchHandler.prepare``)."""

    started: float
    inputs: list[Msg] = field(default_factory=list)
    """Every message of the fetch: acked by the snapshot after their outputs are durable."""
    outputs: list[Output] = field(default_factory=list)
    dead_lettered: list[DeadLettered] = field(default_factory=list)
    skipped: list[Msg] = field(default_factory=list)
    """Former per-source messages of another partition's source: no output."""


class Parsed(NamedTuple):
    """One fetched message, parsed: its batches, or why it is refused."""

    msg: Msg
    delivered: int
    raw: RawInput | None
    refused: Refusal | None = None


def stream_sequence(msg: Msg) -> int:
    """The message's sequence in its stream (0 when it has no JetStream metadata)."""
    try:
        return int(msg.metadata.sequence.stream)
    except Exception:
        return 0


class RawBatchHandler:
    """Classifies the fetched ``dp.raw`` messages of one partition into outputs and publishes
    them (see the module docstring)."""

    def __init__(
        self,
        ns: Namespace,
        resolve_config: ConfigResolver,
        outbox: Outbox,
        state: ClassifierState | None = None,
        *,
        partition: int = 0,
        partitions: int = 1,
        retry_delay: float = 1.0,
        max_retry_delay: float = 60.0,
        max_deliver: int = MAX_DELIVER,
        rollouts: RolloutFollower | None = None,
        live_resolve: ConfigResolver | None = None,
    ) -> None:
        self.ns = ns
        self.resolve_config = resolve_config
        self.outbox = outbox
        self.state = state if state is not None else ClassifierState()
        self.partition = partition
        self.partitions = partitions
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.max_deliver = max_deliver
        self.rollouts = rollouts
        """Canary rollouts: shadow verdicts of their sources go out with the outputs."""
        self.live_resolve = live_resolve or resolve_config
        self.shadow_stream = ns.stream(DP_SHADOW)
        self.classified_stream = ns.stream(DP_CLASSIFIED)
        self.events_stream = ns.stream(DP_EVENTS)
        self.stopping = asyncio.Event()
        """Set at stop: publishes that keep failing are given up (inputs stay unacked)."""
        self._raw_prefix = ns.all_raw()[:-1]  # "<prefix.>dp.raw."
        self._source_partition: dict[SourceKey, int] = {}

    def partition_of(self, domain: str, source_id: str) -> int:
        """``tributary_contracts.partition_of`` with this handler's count, remembered."""
        key = (domain, source_id)
        found = self._source_partition.get(key)
        if found is None:
            if len(self._source_partition) >= 100_000:
                self._source_partition.clear()
            found = self._source_partition[key] = partition_of(domain, source_id, self.partitions)
        return found

    def parse(self, msgs: Sequence[Msg]) -> list[Parsed]:
        """The messages of a fetch as batches, or why they are refused."""
        parsed = []
        for msg in msgs:
            delivered = deliveries(msg)
            if delivered >= self.max_deliver:
                refusal = Refusal("max_deliver", f"delivered {delivered} times")
                parsed.append(Parsed(msg, delivered, None, refusal))
                continue
            former = msg.subject[len(self._raw_prefix) :].count(".") == 1
            try:
                parsed.append(Parsed(msg, delivered, parse_raw(msg.data, former=former)))
            except ValidationError as exc:
                refusal = Refusal("invalid_batch", _describe(exc))
                parsed.append(Parsed(msg, delivered, None, refusal))
            except Exception as exc:  # never drop a fetched message: it would be skipped later
                refusal = Refusal("invalid_batch", repr(exc)[:300])
                parsed.append(Parsed(msg, delivered, None, refusal))
        return parsed

    def evicted_sources(self, parsed: Sequence[Parsed]) -> set[SourceKey]:
        """Sources of ``parsed`` whose state was evicted to the bucket: ``StateLoader`` brings
        them back before ``prepare``."""
        state = self.state
        if not state.on_disk:
            return set()
        return {
            source
            for item in parsed
            if item.raw is not None
            for source in ((b.domain, b.source_id) for b in item.raw.batches)
            if source in state.on_disk and source not in state.chunks
        }

    def prepare(self, parsed: Sequence[Parsed]) -> Prepared:
        """Classify ``parsed`` (advancing the stream state), without any ``await``."""
        prepared = Prepared(perf_counter(), [item.msg for item in parsed])
        RECEIVED_MESSAGES.inc(len(parsed))
        for msg, delivered, raw, refused in parsed:
            if raw is None:
                assert refused is not None
                self._dead_letter(prepared, msg, delivered, *refused)
                continue
            problem = self._misplaced(raw)
            if problem is not None:
                if raw.former:  # another partition's drain classifies it
                    prepared.skipped.append(msg)
                    continue
                self._dead_letter(prepared, msg, delivered, "wrong_partition", problem)
                continue
            try:
                prepared.outputs.extend(self._classify(raw, stream_sequence(msg)))
            except Exception as exc:  # a defect, not bad data: kept for an operator
                ERRORS.labels(stage="classify", error_type=type(exc).__name__).inc()
                log.exception("classification failed", subject=msg.subject)
                self._dead_letter(prepared, msg, delivered, "classify_failed", repr(exc))
        if prepared.skipped:
            OTHER_PARTITION_MESSAGES.inc(len(prepared.skipped))
        return prepared

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

    def _classify(self, raw: RawInput, seq: int) -> list[Output]:
        """Classify the batches of ``raw`` (stream sequence ``seq``) in order; its outputs."""
        classified_at = datetime.now(UTC)
        wall = time()
        state = self.state
        covered = state.covered
        # A former per-source message comes through the drain, whose order against the bundles
        # is not the stream's: only bundles are checked against (and move) the covered position.
        done: set[SourceKey] = set()
        if seq and not raw.former and covered:
            done = {
                (b.domain, b.source_id)
                for b in raw.batches
                if covered.get((b.domain, b.source_id), 0) >= seq
            }
        groups: dict[PointClass, list[tuple[PointBatch, list[Classified]]]] = {}
        events: list[KeyedEvent] = []
        shadows: list[Outgoing] = []
        for batch in raw.batches:
            source = (batch.domain, batch.source_id)
            if source in done:
                SKIPPED_BATCHES.inc()
                continue
            RECEIVED_POINTS.inc(len(batch.points))
            result = classify_message(batch, self.resolve_config, state, classified_at, wall)
            if self.rollouts is not None:
                shadows.extend(
                    self.rollouts.shadow_outputs(
                        self.ns, batch, result, classified_at, self.live_resolve,
                        self.shadow_stream,
                    )
                )
            if result.over_cap:
                OVER_CAP_POINTS.inc(result.over_cap)
            if source in state.chunks:  # a source with state: remember what it holds
                state.seen[source] = wall
                if seq and not raw.former:
                    covered[source] = seq
            for cls, points in result.by_class.items():
                members = groups.get(cls)
                if members is None:
                    groups[cls] = [(batch, points)]
                else:
                    members.append((batch, points))
            events.extend(result.events)
        outputs = [
            self._points_output(raw.domain, cls, classified_at, members)
            for cls, members in groups.items()
        ]
        outputs.extend(self._event_output(event) for _, event in events)
        outputs.extend(Output(shadow, OutputKind.SHADOW, "shadow") for shadow in shadows)
        return outputs

    def _points_output(
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

    def _event_output(self, event: AlertEvent) -> Output:
        subject = self.ns.alert_subject(event.domain, str(event.severity), event.source_id)
        message = Outgoing(
            subject,
            event.model_dump_json().encode(),
            {MSG_ID_HEADER: event_msg_id(event)},
            self.events_stream,
        )
        return Output(message, OutputKind.EVENT, str(event.event))

    def _dead_letter(
        self, prepared: Prepared, msg: Msg, delivered: int, reason: str, detail: str
    ) -> None:
        message = dead_letter(self.ns, CLASSIFIER_DURABLE, msg, reason, detail, delivered)
        prepared.outputs.append(Output(message, OutputKind.DEAD_LETTER, reason))
        prepared.dead_lettered.append(DeadLettered(msg, reason))
        log.warning(
            "message sent to the dead-letter subject",
            subject=msg.subject,
            reason=reason,
            detail=detail[:300],
            deliveries=delivered,
        )

    async def publish(self, prepared: Prepared) -> bool:
        """Publish the outputs of ``prepared`` until JetStream acked every one (True), or the
        handler is stopping (False: the inputs stay unacked and come back after a restart)."""
        done = await self._publish_outputs(prepared.outputs)
        BATCH_SECONDS.observe(perf_counter() - prepared.started)
        return done

    async def _publish_outputs(self, outputs: list[Output]) -> bool:
        if not outputs:
            return True
        done = await publish_until_acked(
            self.outbox.publish_all,
            [o.message for o in outputs],
            retry_delay=self.retry_delay,
            max_delay=self.max_retry_delay,
            give_up=self.stopping,
            on_error=_publish_failed,
        )
        if done:
            for output in outputs:
                _count(output)
        return done

    async def handle(self, msgs: Sequence[Msg]) -> Prepared:
        """Classify ``msgs`` and publish their outputs (tests; the service pipelines
        ``prepare`` and ``publish`` and acks by snapshot)."""
        prepared = self.prepare(self.parse(msgs))
        await self.publish(prepared)
        return prepared

    def staleness(self, limit: int = 1000) -> list[Output]:
        """Open staleness alerts on silent streams (their documents become dirty); the events
        to publish (no ``await``: a cut never sees the alert without its event)."""
        events = staleness_events(self.state, time(), datetime.now(UTC), limit)
        for key, _ in events:
            self.state.dirty.add(self.state.doc_of[key])
        return [self._event_output(event) for _, event in events]

    async def publish_events(self, outputs: list[Output]) -> bool:
        return await self._publish_outputs(outputs)


def _publish_failed(error: BaseException) -> None:
    ERRORS.labels(stage="publish", error_type=type(error).__name__).inc()
    log.warning("publish failed; retrying the same messages", error=repr(error))


def _count(output: Output) -> None:
    if output.kind is OutputKind.POINTS:
        PUBLISHED_POINTS.labels(cls=output.label).inc(output.points)
    elif output.kind is OutputKind.SHADOW:
        SHADOW_BATCHES.inc()
    elif output.kind is OutputKind.EVENT:
        ALERT_EVENTS.labels(event=output.label).inc()
    else:
        DLQ.labels(reason=output.label).inc()


def _describe(exc: ValidationError) -> str:
    """The first few validation errors as one line: ``points.3.value: Input should be…``."""
    parts = []
    for error in exc.errors(include_url=False, include_input=False)[:5]:
        location = ".".join(str(p) for p in error["loc"])
        parts.append(f"{location}: {error['msg']}" if location else error["msg"])
    more = exc.error_count() - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")
