"""Canary rollouts in the classifier (classifier.rollout): which sources, which verdict decides,
and the ShadowBatch with both verdicts that goes out with the classified output.

Driven through ``RawBatchHandler`` with an in-memory outbox (as the handler tests); the rollout
entries are applied as the bucket watch applies them.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime, timedelta

import pytest
from nats.aio.msg import Msg

from classifier.classify import ClassifierState
from classifier.config_store import StreamConfigStore
from classifier.handler import RawBatchHandler
from classifier.rollout import RolloutFollower
from tributary_contracts import (
    CanarySelector,
    ClassifiedBundle,
    DataPoint,
    Namespace,
    PointBatch,
    Rollout,
    RolloutState,
    ShadowBatch,
    StreamConfig,
    Transport,
    ValueConstraints,
    canary_bucket,
    stream_config_key,
)
from tributary_runtime.publish import Outgoing, Published

NS = Namespace("rol")
T0 = datetime(2026, 3, 1, tzinfo=UTC)
LIVE = StreamConfig(value_constraints=ValueConstraints(warning_max=80))
CANDIDATE = StreamConfig(value_constraints=ValueConstraints(warning_max=60))


class RecordingMsg(Msg):
    """A JetStream message recording ack/nak instead of sending them."""

    def __init__(self, data: bytes, *, subject: str) -> None:
        reply = "$JS.ACK.ROL_DP_RAW.classifier.1.1.1.1772053200000000000.0"
        super().__init__(None, subject, reply, data)  # type: ignore[arg-type]
        self.calls: list[tuple[str, float | None]] = []

    async def ack(self) -> None:
        self.calls.append(("ack", None))

    async def nak(self, delay: float | None = None) -> None:
        self.calls.append(("nak", delay))


class MemoryOutbox:
    """Records what the handler publishes (every publish succeeds)."""

    def __init__(self) -> None:
        self.published: list[Outgoing] = []

    async def publish_all(self, messages: Sequence[Outgoing]) -> Published:
        self.published.extend(messages)
        return Published([None] * len(messages), [None] * len(messages))

    async def publish(self, message: Outgoing) -> None:
        self.published.append(message)

    def on(self, subject_part: str) -> list[Outgoing]:
        return [m for m in self.published if subject_part in m.subject]


def rollout(state: RolloutState = RolloutState.SHADOW, **selector: object) -> bytes:
    return (
        Rollout(
            name="cpu-60",
            domain="infrastructure",
            configs={"cpu": CANDIDATE},
            state=state,
            selector=CanarySelector.model_validate(selector or {"sources": ["canary-1"]}),
            updated_at=T0,
        )
        .model_dump_json()
        .encode()
    )


def batch(source: str, *values: float) -> PointBatch:
    return PointBatch(
        domain="infrastructure",
        source_id=source,
        transport=Transport.HTTP,
        received_at=T0,
        points=[
            DataPoint(stream_id="cpu", value=v, ts=T0 + timedelta(seconds=i))
            for i, v in enumerate(values)
        ],
    )


@pytest.fixture
def rollouts() -> RolloutFollower:
    return RolloutFollower()


@pytest.fixture
def handler(rollouts: RolloutFollower) -> tuple[RawBatchHandler, MemoryOutbox]:
    store = StreamConfigStore()
    store.apply(
        stream_config_key("infrastructure", "*", "cpu"), LIVE.model_dump_json().encode(), 3, None
    )
    outbox = MemoryOutbox()
    h = RawBatchHandler(
        NS,
        rollouts.resolver(store.resolve),
        outbox,
        ClassifierState(),
        rollouts=rollouts,
        live_resolve=store.resolve,
    )
    return h, outbox


def stored(outbox: MemoryOutbox) -> list[tuple[str, float, str, int | None]]:
    out = []
    for m in outbox.on(".dp.classified."):
        bundle = ClassifiedBundle.model_validate_json(m.payload)  # type: ignore[arg-type]
        for b in bundle.batches:
            out += [(b.source_id, p.value, b.cls.value, p.config_version) for p in b.points]
    return sorted(out)


def shadows(outbox: MemoryOutbox) -> list[ShadowBatch]:
    return [
        ShadowBatch.model_validate_json(m.payload)  # type: ignore[arg-type]
        for m in outbox.on(".dp.shadow.")
    ]


async def test_in_shadow_the_live_config_decides_and_both_verdicts_go_out(
    handler: tuple[RawBatchHandler, MemoryOutbox], rollouts: RolloutFollower
) -> None:
    h, outbox = handler
    rollouts.apply("cpu-60", rollout(), 11, None)
    msg = RecordingMsg(
        batch("canary-1", 50, 70, 90).model_dump_json().encode(),
        subject=NS.raw_subject("infrastructure", "canary-1"),
    )
    other = RecordingMsg(
        batch("plain-1", 70).model_dump_json().encode(),
        subject=NS.raw_subject("infrastructure", "plain-1"),
    )

    await h.handle([msg, other])

    assert stored(outbox) == [
        ("canary-1", 50.0, "normal", 3),
        ("canary-1", 70.0, "normal", 3),
        ("canary-1", 90.0, "warning", 3),
        ("plain-1", 70.0, "normal", 3),
    ]
    [shadow] = shadows(outbox)
    assert (shadow.rollout, shadow.revision, shadow.state, shadow.source_id) == (
        "cpu-60",
        11,
        RolloutState.SHADOW,
        "canary-1",
    )
    assert [
        (v.value, v.live_cls.value, v.shadow_cls.value, v.shadow_version) for v in shadow.verdicts
    ] == [
        (50.0, "normal", "normal", 11),
        (70.0, "normal", "warning", 11),
        (90.0, "warning", "warning", 11),
    ]


async def test_promote_makes_the_candidate_decide_and_rollback_ends_it_without_restart(
    handler: tuple[RawBatchHandler, MemoryOutbox], rollouts: RolloutFollower
) -> None:
    h, outbox = handler
    rollouts.apply("cpu-60", rollout(RolloutState.PROMOTED), 12, None)
    await h.handle(
        [
            RecordingMsg(
                batch("canary-1", 70).model_dump_json().encode(),
                subject=NS.raw_subject("infrastructure", "canary-1"),
            )
        ]
    )
    assert stored(outbox) == [("canary-1", 70.0, "warning", 12)]
    [shadow] = shadows(outbox)
    assert [(v.live_cls.value, v.shadow_cls.value, v.shadow_version) for v in shadow.verdicts] == [
        ("warning", "normal", 3)
    ]

    outbox.published.clear()
    rollouts.apply("cpu-60", rollout(RolloutState.ROLLED_BACK), 13, None)
    later = batch("canary-1", 70)
    later.points[0].ts = T0 + timedelta(minutes=1)
    await h.handle(
        [
            RecordingMsg(
                later.model_dump_json().encode(),
                subject=NS.raw_subject("infrastructure", "canary-1"),
            )
        ]
    )
    assert stored(outbox) == [("canary-1", 70.0, "normal", 3)]
    assert shadows(outbox) == []


def test_a_percentage_picks_sources_by_stable_hash() -> None:
    sources = [f"sensor-{i:03d}" for i in range(200)]
    selector = CanarySelector(percent=10)
    picked = [s for s in sources if selector.selects(s)]

    assert picked == [s for s in sources if canary_bucket(s) < 1000]
    assert 10 <= len(picked) <= 30  # about 10 % of 200
    assert canary_bucket("sensor-007") == canary_bucket("sensor-007")
    wider = CanarySelector(percent=50)
    assert set(picked) <= {s for s in sources if wider.selects(s)}  # 10 → 50 keeps the canary


def test_globs_and_lists_select_too() -> None:
    selector = CanarySelector(sources=["a"], globs=["dev-1*"])
    assert [s for s in ("a", "b", "dev-1", "dev-17", "dev-2") if selector.selects(s)] == [
        "a",
        "dev-1",
        "dev-17",
    ]


def test_a_rollout_that_selects_nothing_is_refused() -> None:
    with pytest.raises(ValueError, match="picks no source"):
        Rollout(
            name="x", domain="d", configs={"*": CANDIDATE}, selector=CanarySelector(), updated_at=T0
        )


def test_an_invalid_entry_changes_nothing(rollouts: RolloutFollower) -> None:
    rollouts.apply("cpu-60", rollout(), 11, None)
    rollouts.apply("cpu-60", b'{"name": "cpu-60"}', 12, None)
    found = rollouts.rollout_of("infrastructure", "canary-1")
    assert found is not None and found[1] == 11
    rollouts.apply("cpu-60", None, 13, "DEL")
    assert rollouts.rollout_of("infrastructure", "canary-1") is None
