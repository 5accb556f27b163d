"""The raw-batch handler: what it publishes, dead-letters, acks and naks.

``RawBatchHandler.handle`` driven directly with JetStream messages that record their acks (to
check every ack/nak decision and delay). The outbox is the only stand-in: an in-memory recorder
instead of JetStream. The pull loop that feeds the handler is tested against the real NATS in
``test_classifier_consume_integration.py``.
"""

from __future__ import annotations

import asyncio
import json
from collections.abc import Callable, Sequence
from typing import Any

import pytest
from nats.aio.msg import Msg
from prometheus_client import Counter

from classifier.classify import ClassifierState
from classifier.config_store import StreamConfigStore
from classifier.handler import RawBatchHandler
from classifier.metrics import DLQ_MESSAGES, ERRORS, PUBLISHED_POINTS, RECEIVED_POINTS
from classifier.outbox import CoalescingOutbox, Outgoing
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

    async def publish_all(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        results: list[BaseException | None] = []
        for m in messages:
            if self.fail(m):
                results.append(TimeoutError("no ack"))
            else:
                self.published.append(m)
                results.append(None)
        return results

    async def publish(self, message: Outgoing) -> None:
        [error] = await self.publish_all([message])
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


def handler_with(store: StreamConfigStore, outbox: MemoryOutbox) -> RawBatchHandler:
    return RawBatchHandler(
        NS, store.resolve, outbox, ClassifierState(), nak_delay=0.5, nak_max_delay=4
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

    outcome = await handler_with(store, outbox).handle([msg])

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
    assert msg.calls == [("ack", None)]
    assert (outcome.acked, outcome.nacked, outcome.dead_lettered) == ([msg], [], [])
    assert counter(PUBLISHED_POINTS, cls="normal") - before == 3


async def test_a_former_per_source_batch_is_classified_into_a_bundle(
    store: StreamConfigStore, make_batch: MakeBatch
) -> None:
    outbox = MemoryOutbox()
    msg = RecordingMsg(raw(make_batch([20, 70])))  # dp.raw.iot.dev-1, drained after an upgrade
    outcome = await handler_with(store, outbox).handle([msg])
    assert [m.subject for m in outbox.on(".classified.")] == [
        NS.classified_partition_subject("iot", "normal", 0),
        NS.classified_partition_subject("iot", "critical", 0),
    ]
    assert [
        [p.value for p in classified(m).batches[0].points] for m in outbox.on(".classified.")
    ] == [[20.0], [70.0]]
    assert outcome.acked == [msg]


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

    outcome = await handler.handle([misplaced, former_theirs, former_mine])

    [letter] = outbox.on(".dlq.")
    assert letter.headers[DLQ_KIND] == "wrong_partition"
    assert f"source '{theirs}' hashes to partition 2 of 4, not 1" in letter.headers[DLQ_REASON]
    assert outcome.skipped == [former_theirs]  # partition 2's drain classifies it
    [out] = outbox.on(".classified.")
    assert out.subject == NS.classified_partition_subject("iot", "normal", 1)
    assert [b.source_id for b in classified(out).batches] == [mine]
    assert all(m.calls == [("ack", None)] for m in (misplaced, former_theirs, former_mine))


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
    before = counter(DLQ_MESSAGES, reason="invalid_batch")

    outcome = await handler_with(store, outbox).handle([good1, not_json, not_a_batch, good2])

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
    for m in (good1, not_json, not_a_batch, good2):
        assert m.calls == [("ack", None)]
    assert outcome.dead_lettered == [(not_json, "invalid_batch"), (not_a_batch, "invalid_batch")]
    assert counter(DLQ_MESSAGES, reason="invalid_batch") - before == 2


async def test_failed_publish_naks_only_the_inputs_it_concerns(
    store: StreamConfigStore, make_batch: MakeBatch
) -> None:
    outbox = MemoryOutbox(fail=lambda m: ".critical." in m.subject)
    ok = RecordingMsg(raw(make_batch([20, 21])))
    partly = RecordingMsg(raw(make_batch([20, 70], source_id="dev-1")), deliveries=3)
    before = counter(ERRORS, stage="publish", error_type="TimeoutError")

    outcome = await handler_with(store, outbox).handle([ok, partly])

    assert ok.calls == [("ack", None)]
    assert partly.calls == [("nak", 2.0)]  # 0.5 s doubled per earlier delivery
    assert (outcome.acked, outcome.nacked) == ([ok], [partly])
    assert outbox.on(".dlq.") == []
    assert counter(ERRORS, stage="publish", error_type="TimeoutError") - before == 1


@pytest.mark.parametrize(("deliveries", "delay"), [(1, 0.5), (2, 1.0), (4, 4.0), (9, 4.0)])
async def test_nak_delay_grows_with_deliveries_up_to_the_maximum(
    store: StreamConfigStore, make_batch: MakeBatch, deliveries: int, delay: float
) -> None:
    msg = RecordingMsg(raw(make_batch([20])), deliveries=deliveries)
    await handler_with(store, MemoryOutbox(fail=lambda m: True)).handle([msg])
    assert msg.calls == [("nak", delay)]


async def test_message_delivered_max_deliver_times_goes_to_the_dlq_unprocessed(
    store: StreamConfigStore, make_batch: MakeBatch
) -> None:
    outbox = MemoryOutbox()
    last_try = RecordingMsg(raw(make_batch([20])), deliveries=MAX_DELIVER - 1, seq=7)
    given_up = RecordingMsg(raw(make_batch([21])), deliveries=MAX_DELIVER, seq=8)

    outcome = await handler_with(store, outbox).handle([last_try, given_up])

    [letter] = outbox.on(".dlq.")
    assert (letter.headers[DLQ_KIND], letter.headers[DLQ_DELIVERIES]) == (
        "max_deliver",
        str(MAX_DELIVER),
    )
    assert letter.headers[DLQ_REASON] == f"delivered {MAX_DELIVER} times"
    assert letter.payload == given_up.data
    assert PointBatch.model_validate_json(letter.payload).points[0].value == 21.0
    assert [classified(m).batches[0].points[0].value for m in outbox.on(".classified.")] == [20.0]
    assert (last_try.calls, given_up.calls) == ([("ack", None)], [("ack", None)])
    assert outcome.dead_lettered == [(given_up, "max_deliver")]


async def test_failed_dead_letter_publish_naks_instead_of_acking(
    store: StreamConfigStore,
) -> None:
    msg = RecordingMsg(b"garbage")
    outbox = MemoryOutbox(fail=lambda m: ".dlq." in m.subject)
    before = counter(ERRORS, stage="dlq", error_type="TimeoutError")
    outcome = await handler_with(store, outbox).handle([msg])
    assert msg.calls == [("nak", 0.5)]
    assert (outcome.dead_lettered, outcome.nacked, outbox.published) == ([], [msg], [])
    assert counter(ERRORS, stage="dlq", error_type="TimeoutError") - before == 1


async def test_classification_defect_naks_for_a_retry(make_batch: MakeBatch) -> None:
    def broken(*_: Any) -> StreamConfig:
        raise KeyError("boom")

    outbox = MemoryOutbox()
    msg = RecordingMsg(raw(make_batch([20])))
    outcome = await RawBatchHandler(NS, broken, outbox, nak_delay=0.5).handle([msg])
    assert (msg.calls, outbox.published, outcome.nacked) == ([("nak", 0.5)], [], [msg])


async def test_received_points_are_counted(store: StreamConfigStore, make_batch: MakeBatch) -> None:
    before = counter(RECEIVED_POINTS)
    await handler_with(store, MemoryOutbox()).handle(
        [RecordingMsg(raw(make_batch([1, 2, 3]))), RecordingMsg(b"{}")]
    )
    assert counter(RECEIVED_POINTS) - before == 3


# -- alert events and checkpoints -------------------------------------------------------------


def handler_with_checkpoints(
    store: StreamConfigStore, outbox: Any
) -> tuple[RawBatchHandler, ClassifierState]:
    from classifier.checkpoint import Checkpointer

    state = ClassifierState()
    handler = RawBatchHandler(
        NS,
        store.resolve,
        outbox,
        state,
        checkpointer=Checkpointer(outbox, state, NS.bucket("classifier-state")),
        nak_delay=0.5,
    )
    return handler, state


async def test_alert_events_and_checkpoint_go_out_with_the_outputs_before_the_ack(
    store: StreamConfigStore, make_batch: MakeBatch
) -> None:
    outbox = MemoryOutbox()
    handler, _ = handler_with_checkpoints(store, outbox)
    msg = RecordingMsg(raw(make_batch([35, 36])))  # consecutive 1: a warning alert opens

    await handler.handle([msg])

    [event] = outbox.on(".dp.alert.")
    assert event.subject == NS.alert_subject("iot", "warning", "dev-1")
    assert event.stream == NS.stream("DP_EVENTS")
    body = json.loads(event.payload)  # type: ignore[arg-type]
    assert event.headers == {MSG_ID_HEADER: f"{body['alert_id']}:opened"}
    [checkpoint] = [m for m in outbox.published if m.subject.startswith("$KV.")]
    key = f"{escape_key('iot')}.{escape_key('dev-1')}"  # one document per (domain, source)
    assert checkpoint.subject == f"$KV.{NS.bucket('classifier-state')}.{key}"
    assert msg.calls == [("ack", None)]


async def test_failed_event_publish_naks_and_the_redelivery_publishes_it_again(
    store: StreamConfigStore, make_batch: MakeBatch
) -> None:
    failing = {"on": True}
    outbox = MemoryOutbox(fail=lambda m: failing["on"] and ".dp.alert." in m.subject)
    handler, state = handler_with_checkpoints(store, outbox)
    payload = raw(make_batch([35, 36]))

    first = RecordingMsg(payload)
    await handler.handle([first])
    assert first.calls == [("nak", 0.5)]
    assert outbox.on(".dp.alert.") == []
    pending = state.get(("iot", "dev-1", "temp")).pending  # type: ignore[union-attr]
    assert len(pending) == 1

    failing["on"] = False
    again = RecordingMsg(payload, deliveries=2)
    await handler.handle([again])  # its points are duplicates now: no new event, the old one
    [event] = outbox.on(".dp.alert.")
    assert event.headers == {MSG_ID_HEADER: pending[0].msg_id}
    assert again.calls == [("ack", None)]
    assert state.get(("iot", "dev-1", "temp")).pending == []  # type: ignore[union-attr]


# -- publish groups ----------------------------------------------------------------------------


class GatedOutbox(MemoryOutbox):
    """Records each group; a group waits for ``release`` before its acks (JetStream's)."""

    def __init__(self) -> None:
        super().__init__()
        self.groups: list[list[str]] = []
        self.bodies: list[bytes] = []
        self.release = asyncio.Event()

    async def publish_all(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        self.groups.append([m.subject for m in messages])
        self.bodies += [m.payload() if callable(m.payload) else m.payload for m in messages]
        await self.release.wait()
        return await super().publish_all(messages)


async def test_publish_groups_coalesce_within_a_turn_and_overlap_across_turns() -> None:
    inner = GatedOutbox()
    outbox = CoalescingOutbox(inner)
    bodies = iter([b"first", b"second"])
    checkpoint = Outgoing("$KV.b.k", lambda: next(bodies), {}, coalesce="$KV.b.k")

    # one turn: two callers share one group, their common checkpoint is sent once
    first = asyncio.gather(
        outbox.publish_all([Outgoing("a.1", b"1", {}), checkpoint]),
        outbox.publish_all([Outgoing("a.2", b"2", {}), checkpoint]),
    )
    await asyncio.sleep(0.01)
    # a later turn does not wait for the first group's acks
    second = asyncio.ensure_future(outbox.publish_all([Outgoing("b.1", b"3", {}), checkpoint]))
    await asyncio.sleep(0.01)
    assert inner.groups == [["a.1", "$KV.b.k", "a.2"], ["b.1", "$KV.b.k"]]

    inner.release.set()
    assert await first == [[None, None], [None, None]]
    assert await second == [None, None]
    # each group made the checkpoint body once, when it was sent
    assert inner.bodies == [b"1", b"first", b"2", b"3", b"second"]
