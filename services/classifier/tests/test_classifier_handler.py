"""The raw-bundle handler and the partition checkpoint: what is published, dead-lettered,
written to the state bucket, and when inputs are acked.

``RawBatchHandler.handle`` and ``PartitionCheckpoint.snapshot`` driven directly with JetStream
messages that record their acks. The outbox is the only stand-in: an in-memory recorder instead
of JetStream. The pull loop that feeds them is tested against the real NATS in
``test_classifier_consume_integration.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.aio.msg import Msg
from prometheus_client import Counter

from classifier.checkpoint import PartitionCheckpoint
from classifier.classify import ClassifierState
from classifier.config_store import StreamConfigStore
from classifier.handler import RawBatchHandler
from classifier.metrics import DLQ, ERRORS, PUBLISHED_POINTS, RECEIVED_POINTS
from classifier.outbox import CoalescingOutbox
from classifier.state import source_doc_from_json
from tributary_contracts import (
    DLQ_CONSUMER,
    DLQ_DELIVERIES,
    DLQ_KIND,
    DLQ_REASON,
    DLQ_SUBJECT,
    MAX_DELIVER,
    MSG_ID_HEADER,
    ClassifiedBundle,
    Namespace,
    PointBatch,
    PointBundle,
    StreamConfig,
    batch_msg_id,
    bundle_msg_id,
    dead_letter_headers,
    escape_key,
    partition_of,
    stream_config_key,
)
from tributary_runtime.publish import Outgoing, Published

T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)  # as in conftest.make_batch
PREFIX = "hdl"
NS = Namespace(PREFIX)
MakeBatch = Callable[..., PointBatch]


class RecordingMsg(Msg):
    """A JetStream message as nats-py delivers it, recording ack/nak instead of sending them."""

    def __init__(
        self, data: bytes, *, deliveries: int = 1, seq: int = 1, subject: str | None = None
    ) -> None:
        reply = f"$JS.ACK.HDL_DP_RAW.classifier.{deliveries}.{seq}.{seq}.1772053200000000000.0"
        subject = subject or NS.raw_subject("iot", "dev-1")  # a former per-source subject
        super().__init__(None, subject, reply, data)  # type: ignore[arg-type]
        self.calls: list[tuple[str, float | None]] = []

    async def ack(self) -> None:
        self.calls.append(("ack", None))

    async def nak(self, delay: float | None = None) -> None:
        self.calls.append(("nak", delay))


class MemoryOutbox:
    """Records what the handler publishes; ``fail`` decides which publishes fail."""

    def __init__(self, fail: Callable[[Outgoing], bool] = lambda _: False) -> None:
        self.fail = fail
        self.published: list[Outgoing] = []
        self.attempts: list[Outgoing] = []

    async def publish_all(self, messages: Sequence[Outgoing]) -> Published:
        errors: list[BaseException | None] = []
        for m in messages:
            self.attempts.append(m)
            if self.fail(m):
                errors.append(TimeoutError("no ack"))
            else:
                self.published.append(m)
                errors.append(None)
        return Published([None] * len(errors), errors)

    async def publish(self, message: Outgoing) -> None:
        [error] = (await self.publish_all([message])).errors
        if error is not None:
            raise error

    def on(self, subject_part: str) -> list[Outgoing]:
        return [m for m in self.published if subject_part in m.subject]


def counter(metric: Counter, **labels: str) -> float:
    return (metric.labels(**labels) if labels else metric)._value.get()  # type: ignore[attr-defined]


@pytest.fixture
def store(temperature_config: StreamConfig) -> StreamConfigStore:
    s = StreamConfigStore()
    s.apply(
        stream_config_key("iot", "*", "temp"),
        temperature_config.model_dump_json().encode(),
        5,
        None,
    )
    return s


def handler_with(store: StreamConfigStore, outbox: Any, **kw: Any) -> RawBatchHandler:
    return RawBatchHandler(
        NS, store.resolve, outbox, ClassifierState(), retry_delay=0.01, max_retry_delay=0.02, **kw
    )


def raw(batch: PointBatch) -> bytes:
    return batch.model_dump_json().encode()


def bundle_msg(*batches: PointBatch, partition: int = 0, seq: int = 1) -> RecordingMsg:
    """The batches as one PointBundle on its partitioned subject, as a gateway publishes it."""
    bundle = PointBundle(domain=batches[0].domain, partition=partition, batches=list(batches))
    subject = NS.raw_partition_subject(bundle.domain, partition)
    return RecordingMsg(bundle.model_dump_json().encode(), seq=seq, subject=subject)


def classified(message: Outgoing) -> ClassifiedBundle:
    assert isinstance(message.payload, bytes)
    return ClassifiedBundle.model_validate_json(message.payload)


# -- decisions, one fetch at a time ---------------------------------------------------------


async def test_bundle_is_published_as_one_classified_bundle_per_class_then_acked(
    store: StreamConfigStore, make_batch: MakeBatch
) -> None:
    outbox = MemoryOutbox()
    one = make_batch([20, 35, 70, 21], source_id="dev-1")
    two = make_batch([22, 36], source_id="dev-2")
    msg = bundle_msg(one, two)
    before = counter(PUBLISHED_POINTS, cls="normal")

    prepared = await handler_with(store, outbox).handle([msg])

    out = [m for m in outbox.published if m.stream == NS.stream("DP_CLASSIFIED")]
    assert [m.subject for m in out] == [
        NS.classified_partition_subject("iot", "normal", 0),
        NS.classified_partition_subject("iot", "warning", 0),
        NS.classified_partition_subject("iot", "critical", 0),
    ]
    bodies = [classified(m) for m in out]
    assert [[(b.source_id, [p.value for p in b.points]) for b in x.batches] for x in bodies] == [
        [("dev-1", [20.0, 21.0]), ("dev-2", [22.0])],
        [("dev-1", [35.0]), ("dev-2", [36.0])],
        [("dev-1", [70.0])],
    ]
    for m, body in zip(out, bodies, strict=True):
        assert (body.domain, body.partition) == ("iot", 0)
        assert all(b.cls == body.cls for b in body.batches)
        ids = [
            batch_msg_id("iot", b.source_id, [(p.stream_id, p.ts) for p in b.points], body.cls)
            for b in body.batches
        ]
        # derived from the points: a redelivered input makes the same ids (deduplicated)
        assert m.headers == {MSG_ID_HEADER: bundle_msg_id(ids)}
    assert msg.calls == []  # acked by the partition's next snapshot, not here
    assert (prepared.inputs, prepared.dead_lettered) == ([msg], [])
    assert counter(PUBLISHED_POINTS, cls="normal") - before == 3


async def test_a_former_per_source_batch_is_classified_into_a_bundle(
    store: StreamConfigStore, make_batch: MakeBatch
) -> None:
    outbox = MemoryOutbox()
    msg = RecordingMsg(raw(make_batch([20, 70])))  # dp.raw.iot.dev-1, drained after an upgrade
    prepared = await handler_with(store, outbox).handle([msg])
    assert [m.subject for m in outbox.on(".classified.")] == [
        NS.classified_partition_subject("iot", "normal", 0),
        NS.classified_partition_subject("iot", "critical", 0),
    ]
    assert [
        [p.value for p in classified(m).batches[0].points] for m in outbox.on(".classified.")
    ] == [[20.0], [70.0]]
    assert prepared.inputs == [msg]


async def test_a_source_of_another_partition_is_refused_or_left_to_its_owner(
    store: StreamConfigStore, make_batch: MakeBatch
) -> None:
    sources = [f"dev-{i}" for i in range(40)]
    mine = next(s for s in sources if partition_of("iot", s, 4) == 1)
    theirs = next(s for s in sources if partition_of("iot", s, 4) == 2)
    outbox = MemoryOutbox()
    handler = RawBatchHandler(
        NS, store.resolve, outbox, ClassifierState(), partition=1, partitions=4
    )
    misplaced = bundle_msg(
        make_batch([20], source_id=mine), make_batch([21], source_id=theirs), partition=1, seq=1
    )
    former_theirs = RecordingMsg(
        raw(make_batch([22], source_id=theirs)), seq=2, subject=NS.raw_subject("iot", theirs)
    )
    former_mine = RecordingMsg(
        raw(make_batch([23], source_id=mine)), seq=3, subject=NS.raw_subject("iot", mine)
    )

    prepared = await handler.handle([misplaced, former_theirs, former_mine])

    [letter] = outbox.on(".dlq.")
    assert letter.headers[DLQ_KIND] == "wrong_partition"
    assert f"source '{theirs}' hashes to partition 2 of 4, not 1" in letter.headers[DLQ_REASON]
    assert prepared.skipped == [former_theirs]  # partition 2's drain classifies it
    [out] = outbox.on(".classified.")
    assert out.subject == NS.classified_partition_subject("iot", "normal", 1)
    assert [b.source_id for b in classified(out).batches] == [mine]
    assert prepared.inputs == [misplaced, former_theirs, former_mine]  # all acked by snapshot


async def test_invalid_messages_go_to_the_dlq_and_their_neighbours_are_classified(
    store: StreamConfigStore, make_batch: MakeBatch
) -> None:
    outbox = MemoryOutbox()
    good1, good2 = (
        RecordingMsg(raw(make_batch([20])), seq=1),
        RecordingMsg(raw(make_batch([70])), seq=4),
    )
    not_json = RecordingMsg(b"\xff{not json", seq=2)
    bad_value = json.loads(raw(make_batch([1])))
    bad_value["points"][0]["value"] = "warm"
    not_a_batch = RecordingMsg(json.dumps(bad_value).encode(), seq=3)
    before = counter(DLQ, reason="invalid_batch")

    prepared = await handler_with(store, outbox).handle([good1, not_json, not_a_batch, good2])

    assert [m.subject for m in outbox.on(".classified.")] == [
        NS.classified_partition_subject("iot", "normal", 0),
        NS.classified_partition_subject("iot", "critical", 0),
    ]
    letters = outbox.on(".dlq.")
    assert [m.subject for m in letters] == [NS.dlq_subject("classifier")] * 2
    assert [m.stream for m in letters] == [NS.stream("DP_DLQ")] * 2
    # the body is the refused payload itself, byte for byte, so it can be republished as is
    assert [m.payload for m in letters] == [not_json.data, not_a_batch.data]
    assert [
        (m.headers[DLQ_CONSUMER], m.headers[DLQ_KIND], m.headers[DLQ_SUBJECT]) for m in letters
    ] == [("classifier", "invalid_batch", NS.raw_subject("iot", "dev-1"))] * 2
    assert [m.headers[DLQ_DELIVERIES] for m in letters] == ["1", "1"]
    assert letters[0].headers[DLQ_REASON].startswith("Invalid JSON")
    assert (
        letters[1].headers[DLQ_REASON].startswith("points.0.value: Input should be a valid number")
    )
    # exactly the contract's headers, with its deterministic Nats-Msg-Id (a retry is deduplicated)
    for m, original in zip(letters, (not_json, not_a_batch), strict=True):
        assert m.headers == dead_letter_headers(
            "classifier",
            "invalid_batch",
            m.headers[DLQ_REASON],
            original.subject,
            1,
            original.data,
        )
    assert letters[0].headers[MSG_ID_HEADER] != letters[1].headers[MSG_ID_HEADER]
    assert prepared.inputs == [good1, not_json, not_a_batch, good2]
    assert prepared.dead_lettered == [(not_json, "invalid_batch"), (not_a_batch, "invalid_batch")]
    assert counter(DLQ, reason="invalid_batch") - before == 2


async def test_failed_publishes_are_retried_unchanged_until_acked(
    store: StreamConfigStore, make_batch: MakeBatch
) -> None:
    failures = {"left": 3}
    critical_subject = NS.classified_partition_subject("iot", "critical", 0)

    def fail(m: Outgoing) -> bool:
        if m.subject == critical_subject and failures["left"]:
            failures["left"] -= 1
            return True
        return False

    outbox = MemoryOutbox(fail)
    before = counter(ERRORS, stage="publish", error_type="TimeoutError")

    await handler_with(store, outbox).handle([RecordingMsg(raw(make_batch([20, 70])))])

    critical = [m for m in outbox.attempts if m.subject == critical_subject]
    assert (
        len(critical) == 4 and len({(m.payload, m.headers[MSG_ID_HEADER]) for m in critical}) == 1
    )
    assert [m.subject for m in outbox.on(".classified.")] == [
        NS.classified_partition_subject("iot", "normal", 0),  # sent once, not again
        critical_subject,
    ]
    assert counter(ERRORS, stage="publish", error_type="TimeoutError") - before == 3


async def test_a_stopping_handler_gives_up_publishing(
    store: StreamConfigStore, make_batch: MakeBatch
) -> None:
    handler = handler_with(store, MemoryOutbox(fail=lambda m: True))
    prepared = handler.prepare(handler.parse([RecordingMsg(raw(make_batch([20])))]))
    publishing = asyncio.create_task(handler.publish(prepared))
    await asyncio.sleep(0.05)
    handler.stopping.set()
    assert await asyncio.wait_for(publishing, 5) is False  # the input stays unacked


async def test_message_delivered_max_deliver_times_goes_to_the_dlq_unprocessed(
    store: StreamConfigStore, make_batch: MakeBatch
) -> None:
    outbox = MemoryOutbox()
    last_try = RecordingMsg(raw(make_batch([20])), deliveries=MAX_DELIVER - 1, seq=7)
    given_up = RecordingMsg(raw(make_batch([21])), deliveries=MAX_DELIVER, seq=8)

    prepared = await handler_with(store, outbox).handle([last_try, given_up])

    [letter] = outbox.on(".dlq.")
    assert (letter.headers[DLQ_KIND], letter.headers[DLQ_DELIVERIES]) == (
        "max_deliver",
        str(MAX_DELIVER),
    )
    assert letter.headers[DLQ_REASON] == f"delivered {MAX_DELIVER} times"
    assert letter.payload == given_up.data
    assert PointBatch.model_validate_json(letter.payload).points[0].value == 21.0
    assert [classified(m).batches[0].points[0].value for m in outbox.on(".classified.")] == [20.0]
    assert prepared.dead_lettered == [(given_up, "max_deliver")]


async def test_classification_defect_dead_letters_the_input(make_batch: MakeBatch) -> None:
    def broken(*_: Any) -> StreamConfig:
        raise KeyError("boom")

    outbox = MemoryOutbox()
    msg = RecordingMsg(raw(make_batch([20])))
    prepared = await RawBatchHandler(NS, broken, outbox).handle([msg])
    [letter] = outbox.published
    assert (letter.headers[DLQ_KIND], letter.headers[DLQ_REASON]) == (
        "classify_failed",
        "KeyError('boom')",
    )
    assert prepared.dead_lettered == [(msg, "classify_failed")]


async def test_received_points_are_counted(store: StreamConfigStore, make_batch: MakeBatch) -> None:
    before = counter(RECEIVED_POINTS)
    await handler_with(store, MemoryOutbox()).handle(
        [RecordingMsg(raw(make_batch([1, 2, 3]))), RecordingMsg(b"{}")]
    )
    assert counter(RECEIVED_POINTS) - before == 3


async def test_alert_events_go_out_with_the_outputs(
    store: StreamConfigStore, make_batch: MakeBatch
) -> None:
    outbox = MemoryOutbox()
    await handler_with(store, outbox).handle([bundle_msg(make_batch([35, 36]))])

    [event] = outbox.on(".dp.alert.")  # consecutive 1: a warning alert opens
    assert event.subject == NS.alert_subject("iot", "warning", "dev-1")
    assert event.stream == NS.stream("DP_EVENTS")
    body = json.loads(event.payload)
    assert event.headers == {MSG_ID_HEADER: f"{body['alert_id']}:opened"}
    assert [m.subject for m in outbox.published if m.subject.startswith("$KV.")] == []


# -- snapshots: the partition checkpoint -------------------------------------------------------


class GatedOutbox(MemoryOutbox):
    """Records each group; a group waits for ``release`` before its acks (JetStream's)."""

    def __init__(self) -> None:
        super().__init__()
        self.groups: list[list[str]] = []
        self.release = asyncio.Event()
        self.release.set()

    async def publish_all(self, messages: Sequence[Outgoing]) -> Published:
        self.groups.append([m.subject for m in messages])
        await self.release.wait()
        return await super().publish_all(messages)


def partition_with(
    store: StreamConfigStore, outbox: Any
) -> tuple[RawBatchHandler, PartitionCheckpoint]:
    handler = handler_with(store, outbox)
    checkpoint = PartitionCheckpoint(
        0, handler.state, outbox, BUCKET, retry_delay=0.01, max_retry_delay=0.02
    )
    return handler, checkpoint


def run_fetch(handler: RawBatchHandler, checkpoint: PartitionCheckpoint, msgs: list[Any]) -> Any:
    """What the pull loop does with one fetch: classify, publish in a task, track."""
    prepared = handler.prepare(handler.parse(msgs))
    task = asyncio.create_task(handler.publish(prepared))
    checkpoint.track(prepared.inputs, task)
    return task


BUCKET = NS.bucket("classifier-state")
DOC_KEY = f"$KV.{BUCKET}.{escape_key('iot')}.{escape_key('dev-1')}"


async def test_a_snapshot_acks_only_after_the_outputs_and_the_documents_are_acked(
    store: StreamConfigStore, make_batch: MakeBatch
) -> None:
    outbox = GatedOutbox()
    handler, checkpoint = partition_with(store, outbox)
    outbox.release.clear()  # JetStream is slow to ack
    first = bundle_msg(make_batch([35, 36]), seq=11)
    run_fetch(handler, checkpoint, [first])
    snapshot = asyncio.create_task(checkpoint.snapshot())
    await asyncio.sleep(0.05)
    assert first.calls == []  # outputs not acked yet: neither document nor ack
    assert all(not s.startswith("$KV.") for group in outbox.groups for s in group)

    second = bundle_msg(make_batch([37], start=T0 + timedelta(seconds=5)), seq=12)
    run_fetch(handler, checkpoint, [second])  # after the cut: waits for the next snapshot
    outbox.release.set()
    assert await snapshot == 1

    assert first.calls == [("ack", None)] and second.calls == []
    [write] = [m for m in outbox.published if m.subject.startswith("$KV.")]
    assert write.subject == DOC_KEY and write.stream == f"KV_{BUCKET}"
    doc = source_doc_from_json(write.payload)
    assert doc.covered == 11  # the input position its state holds: the first bundle
    assert [st.last_value for _, st in doc.states] == [36.0]  # the cut's state, not later
    assert await checkpoint.snapshot() == 1
    assert second.calls == [("ack", None)]


async def test_a_failed_document_write_keeps_the_inputs_unacked_until_it_lands(
    store: StreamConfigStore, make_batch: MakeBatch
) -> None:
    failures = {"left": 2}

    def fail(m: Outgoing) -> bool:
        if m.subject.startswith("$KV.") and failures["left"]:
            failures["left"] -= 1
            return True
        return False

    outbox = MemoryOutbox(fail)
    handler, checkpoint = partition_with(store, outbox)
    msg = bundle_msg(make_batch([35]), seq=5)
    run_fetch(handler, checkpoint, [msg])
    assert await checkpoint.snapshot() == 1
    assert msg.calls == [("ack", None)]
    assert len([m for m in outbox.attempts if m.subject == DOC_KEY]) == 3
    assert handler.state.dirty == set()


async def test_a_redelivered_bundle_covered_by_the_state_is_skipped_per_source(
    store: StreamConfigStore, make_batch: MakeBatch
) -> None:
    outbox = MemoryOutbox()
    handler, checkpoint = partition_with(store, outbox)
    one = make_batch([35, 36], source_id="dev-1")
    await handler.handle([bundle_msg(one, seq=20)])
    await checkpoint.snapshot()
    published = len(outbox.published)

    # the same bundle again (its ack was lost), now with a batch of a new source in it
    two = make_batch([20], source_id="dev-2")
    prepared = await handler.handle([bundle_msg(one, two, seq=20)])

    [out] = outbox.published[published:]
    assert [b.source_id for b in classified(out).batches] == ["dev-2"]
    assert prepared.inputs and handler.state.covered[("iot", "dev-1")] == 20
    st = handler.state.get(("iot", "dev-1", "temp"))
    assert st is not None and (st.run, st.last_value) == (2, 36.0)  # nothing counted twice


async def test_publish_groups_of_one_turn_go_out_together() -> None:
    inner = GatedOutbox()
    outbox = CoalescingOutbox(inner)
    first = asyncio.gather(
        outbox.publish_all([Outgoing("a.1", b"1", {})]),
        outbox.publish_all([Outgoing("a.2", b"2", {}), Outgoing("a.3", b"3", {})]),
    )
    await asyncio.sleep(0.01)
    second = asyncio.ensure_future(outbox.publish_all([Outgoing("b.1", b"4", {})]))
    assert [p.errors for p in await first] == [[None], [None, None]]
    assert (await second).errors == [None]
    assert inner.groups == [["a.1", "a.2", "a.3"], ["b.1"]]


async def test_a_snapshot_after_a_given_up_publish_writes_and_acks_nothing(
    store: StreamConfigStore, make_batch: MakeBatch
) -> None:
    outbox = MemoryOutbox(fail=lambda m: not m.subject.startswith("$KV."))  # the bus refuses
    handler, checkpoint = partition_with(store, outbox)
    msg = bundle_msg(make_batch([35]), seq=3)
    publishing = run_fetch(handler, checkpoint, [msg])
    await asyncio.sleep(0.05)
    handler.stopping.set()  # the process stops while the outputs are still refused
    assert await publishing is False
    assert await checkpoint.snapshot() == 0
    assert msg.calls == []  # comes back to the restarted process, unacked
    assert [m for m in outbox.published if m.subject.startswith("$KV.")] == []
    assert handler.state.dirty  # its state was not written either
