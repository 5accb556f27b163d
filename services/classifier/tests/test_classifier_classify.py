"""Unit tests of the classification rules and of classify_batch (no NATS)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from classifier.classify import (
    NO_CONFIG_REASON,
    ClassifierState,
    ConfigResolver,
    Verdict,
    classify,
    classify_batch,
    classify_message,
)
from tributary_contracts import (
    ClassifiedBatch,
    ClassifiedPoint,
    DataPoint,
    LegacyIds,
    PointBatch,
    PointClass,
    StreamConfig,
    ValueConstraints,
)

T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)
CRITICAL, WARNING, NORMAL = PointClass.CRITICAL, PointClass.WARNING, PointClass.NORMAL
MakeBatch = Callable[..., PointBatch]


def point(value: float, stream_id: str = "temp", **fields: Any) -> DataPoint:
    return DataPoint(stream_id=stream_id, value=value, ts=fields.pop("ts", T0), **fields)


# temperature_config: physical -40..125, alert -20/60, operational 0..50, warning 5/30.
ZONES = [
    # value, class, rule, reason
    (130, CRITICAL, "physical_range", "value 130.0 is above the physical maximum 125.0"),
    (125.0001, CRITICAL, "physical_range", "value 125.0001 is above the physical maximum 125.0"),
    (-41, CRITICAL, "physical_range", "value -41.0 is below the physical minimum -40.0"),
    (125, CRITICAL, "critical_zone", "value 125.0 is at or above the alert maximum 60.0"),
    (-40, CRITICAL, "critical_zone", "value -40.0 is at or below the alert minimum -20.0"),
    (60, CRITICAL, "critical_zone", "value 60.0 is at or above the alert maximum 60.0"),
    (-20, CRITICAL, "critical_zone", "value -20.0 is at or below the alert minimum -20.0"),
    (59.9, WARNING, "operational_range", "value 59.9 is above the operational maximum 50.0"),
    (-19.9, WARNING, "operational_range", "value -19.9 is below the operational minimum 0.0"),
    (50.1, WARNING, "operational_range", "value 50.1 is above the operational maximum 50.0"),
    (-0.1, WARNING, "operational_range", "value -0.1 is below the operational minimum 0.0"),
    (50, WARNING, "warning_zone", "value 50.0 is at or above the warning maximum 30.0"),
    (0, WARNING, "warning_zone", "value 0.0 is at or below the warning minimum 5.0"),
    (30, WARNING, "warning_zone", "value 30.0 is at or above the warning maximum 30.0"),
    (5, WARNING, "warning_zone", "value 5.0 is at or below the warning minimum 5.0"),
    (29.9, NORMAL, "none", "value 29.9 is within every configured limit"),
    (5.1, NORMAL, "none", "value 5.1 is within every configured limit"),
    (20, NORMAL, "none", "value 20.0 is within every configured limit"),
]


@pytest.mark.parametrize(("value", "cls", "rule", "reason"), ZONES)
def test_classify_puts_each_value_in_its_zone(
    temperature_config: StreamConfig, value: float, cls: PointClass, rule: str, reason: str
) -> None:
    assert classify(point(value), temperature_config, None)[:3] == (cls, reason, rule)


def limits(**values: float) -> StreamConfig:
    return StreamConfig(value_constraints=ValueConstraints(**values))


MISSING_LIMITS = [
    # only some limits set: the others never fire
    (limits(warning_max=30), 1e9, WARNING, "warning_zone"),
    (limits(warning_min=-5), -1e9, WARNING, "warning_zone"),
    (limits(max_value=100), 1e9, CRITICAL, "physical_range"),
    (limits(max_value=100), -1e9, NORMAL, "none"),
    (limits(alert_min=-10), -10, CRITICAL, "critical_zone"),
    (limits(alert_min=-10), 1e9, NORMAL, "none"),
    (limits(operational_max=50), 50.5, WARNING, "operational_range"),
    (limits(operational_max=50), 50, NORMAL, "none"),
    (limits(), 1e300, NORMAL, "none"),
    (limits(), -1e300, NORMAL, "none"),
]


@pytest.mark.parametrize(("config", "value", "cls", "rule"), MISSING_LIMITS)
def test_classify_ignores_limits_that_are_not_set(
    config: StreamConfig, value: float, cls: PointClass, rule: str
) -> None:
    verdict = classify(point(value), config, None)
    assert (verdict.cls, verdict.rule) == (cls, rule)


PRECEDENCE = [
    # a value inside several zones gets the first one of the table
    (limits(max_value=100, alert_max=50), 150, "physical_range"),
    (limits(alert_max=50, operational_max=40), 55, "critical_zone"),
    (limits(alert_max=50, warning_max=10), 55, "critical_zone"),
    (limits(operational_max=40, warning_max=10), 45, "operational_range"),
    (
        limits(min_value=-100, alert_min=-50, operational_min=-40, warning_min=-30),
        -101,
        "physical_range",
    ),
    (limits(alert_min=-50, operational_min=-40, warning_min=-30), -55, "critical_zone"),
    (limits(operational_min=-40, warning_min=-30), -45, "operational_range"),
]


@pytest.mark.parametrize(("config", "value", "rule"), PRECEDENCE)
def test_classify_first_matching_zone_wins(config: StreamConfig, value: float, rule: str) -> None:
    assert classify(point(value), config, None).rule == rule


def test_classify_without_config_is_normal_and_says_so() -> None:
    assert classify(point(1e9), None, None) == Verdict(NORMAL, NO_CONFIG_REASON, "none")


# -- classify_batch ------------------------------------------------------------------------


def fixed(config: StreamConfig | None) -> ConfigResolver:
    """A resolver that gives every stream ``config``."""

    def resolve(domain: str, source: str, stream: str, stream_type: str | None) -> Any:
        return config

    return resolve


def test_classify_batch_splits_by_class_keeping_order(
    make_batch: MakeBatch, temperature_config: StreamConfig
) -> None:
    temperature_config.version = 7
    batch = make_batch([20, 35, 70, 21, 40, 130, 22])
    now = datetime(2026, 3, 1, tzinfo=UTC)

    result = classify_batch(batch, fixed(temperature_config), ClassifierState(), now=now)

    assert [(b.cls, [p.value for p in b.points]) for b in result] == [
        (NORMAL, [20.0, 21.0, 22.0]),
        (WARNING, [35.0, 40.0]),
        (CRITICAL, [70.0, 130.0]),
    ]
    for out in result:
        assert (out.domain, out.source_id, out.transport, out.received_at) == (
            batch.domain,
            batch.source_id,
            batch.transport,
            batch.received_at,
        )
        assert out.classified_at == now
        assert {p.config_version for p in out.points} == {7}
    critical = result[2].points
    assert [(p.rule, p.reason) for p in critical] == [
        ("critical_zone", "value 70.0 is at or above the alert maximum 60.0"),
        ("physical_range", "value 130.0 is above the physical maximum 125.0"),
    ]
    assert [p.ts for p in critical] == [batch.points[2].ts, batch.points[5].ts]


def test_classify_batch_keeps_every_point_field(make_batch: MakeBatch) -> None:
    legacy = LegacyIds(sensor_id=17, device_uuid="d-1")
    batch = make_batch(
        [1.5], stream_type="temperature", sequence=42, metadata={"core": 0}, legacy=legacy
    )

    [out] = classify_batch(batch, fixed(None), ClassifierState())

    [cp] = out.points
    source = batch.points[0]
    assert cp.model_dump(exclude={"reason", "rule", "config_version"}) == source.model_dump()
    assert (cp.reason, cp.rule, cp.config_version) == (NO_CONFIG_REASON, "none", None)


def test_classify_batch_output_equals_a_fully_validated_batch(
    make_batch: MakeBatch, temperature_config: StreamConfig
) -> None:
    temperature_config.version = 3
    batch = make_batch([20, 35, 70], metadata={"k": [1, 2]})

    for out in classify_batch(batch, fixed(temperature_config), ClassifierState()):
        validated = ClassifiedBatch.model_validate_json(out.model_dump_json())
        assert validated == out
        assert validated.model_dump() == out.model_dump()
        assert all(isinstance(p, ClassifiedPoint) for p in out.points)
        assert out.model_fields_set == validated.model_fields_set


def test_classify_batch_resolves_each_stream_once_with_its_type(
    temperature_config: StreamConfig,
) -> None:
    points = [
        point(70, stream_id="a", stream_type="temperature"),
        point(70, stream_id="b"),
        point(71, stream_id="a", stream_type="temperature", ts=T0 + timedelta(seconds=1)),
    ]
    batch = PointBatch(
        domain="iot", source_id="dev-1", transport="mqtt", received_at=T0, points=points
    )
    configs = {"a": temperature_config, "b": None}
    calls: list[tuple[str, str, str, str | None]] = []

    def resolve(domain: str, source: str, stream: str, stream_type: str | None) -> Any:
        calls.append((domain, source, stream, stream_type))
        return configs[stream]

    result = classify_batch(batch, resolve, ClassifierState())

    assert calls == [("iot", "dev-1", "a", "temperature"), ("iot", "dev-1", "b", None)]
    assert [(b.cls, [p.stream_id for p in b.points]) for b in result] == [
        (CRITICAL, ["a", "a"]),
        (NORMAL, ["b"]),
    ]
    assert result[1].points[0].reason == NO_CONFIG_REASON


def test_classify_batch_remembers_the_latest_point_of_each_configured_stream(
    make_batch: MakeBatch,
) -> None:
    state = ClassifierState()
    configured = fixed(StreamConfig())
    classify_batch(make_batch([1, 2, 3]), configured, state)
    key = ("iot", "dev-1", "temp")
    latest = state.get(key)
    assert latest is not None and (latest.last_value, latest.last_ts) == (
        3.0,
        T0 + timedelta(seconds=2),
    )

    # a late (older) point does not rewind the stream; a newer one moves it on
    classify_batch(make_batch([99], start=T0 - timedelta(hours=1)), configured, state)
    assert (state.get(key).last_value, len(state)) == (3.0, 1)  # type: ignore[union-attr]
    classify_batch(make_batch([4], start=T0 + timedelta(hours=1)), configured, state)
    assert state.get(key).last_value == 4.0  # type: ignore[union-attr]
    classify_batch(make_batch([5], source_id="dev-2"), configured, state)
    assert len(state) == 2
    assert state.dirty == {("iot", "dev-1", 0), ("iot", "dev-2", 0)}


def test_an_unconfigured_stream_gets_no_state(make_batch: MakeBatch) -> None:
    state = ClassifierState()
    classify_batch(make_batch([1, 2, 3]), fixed(None), state)
    assert (len(state), state.dirty, state.chunks) == (0, set(), {})


def test_new_streams_of_a_source_at_its_cap_get_value_rules_and_no_state(
    make_batch: MakeBatch,
) -> None:
    state = ClassifierState(max_streams_per_source=3)
    config = StreamConfig(value_constraints=ValueConstraints(max_value=100))
    points = [DataPoint(stream_id=f"s{i}", value=150.0 if i == 4 else 1.0, ts=T0) for i in range(5)]
    batch = PointBatch(
        domain="iot", source_id="dev-1", transport="http", received_at=T0, points=points
    )
    result = classify_message(batch, fixed(config), state)
    assert result.over_cap == 2
    assert sorted(k[2] for k in state.streams) == ["s0", "s1", "s2"]
    [critical] = result.by_class[PointClass.CRITICAL]
    assert critical[0].stream_id == "s4"
    assert critical[1].reason == (
        "stream limit of the source reached (3 streams), value rules only: "
        "value 150.0 is above the physical maximum 100.0"
    )
    # another source has its own budget
    other = batch.model_copy(update={"source_id": "dev-2"})
    assert classify_message(other, fixed(config), state).over_cap == 2
