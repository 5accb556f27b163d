"""Rate-of-change rules, every boundary, late/redelivered points, and properties (hypothesis)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from classifier.classify import ClassifierState, classify, classify_message
from tributary_contracts import (
    DataPoint,
    PointBatch,
    PointClass,
    RateConstraints,
    Severity,
    StreamConfig,
    ValueConstraints,
)

T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)
NORMAL, WARNING, CRITICAL, ANOMALY = (
    PointClass.NORMAL,
    PointClass.WARNING,
    PointClass.CRITICAL,
    PointClass.ANOMALY,
)


def point(value: float, seconds: float = 0.0, stream_id: str = "s") -> DataPoint:
    return DataPoint(stream_id=stream_id, value=value, ts=T0 + timedelta(seconds=seconds))


def rates(severity: Severity = Severity.ANOMALY, **limits: float) -> StreamConfig:
    return StreamConfig(rate_constraints=RateConstraints(severity=severity, **limits))


# (config, previous value, seconds since the previous point, value) -> (class, rule)
RATE_TABLE = [
    # abs_delta 10: |Δ| > 10 fires, exactly 10 does not, either sign
    (rates(abs_delta=10), 50, 1, 60, NORMAL, "none"),
    (rates(abs_delta=10), 50, 1, 60.001, ANOMALY, "rate_abs_delta"),
    (rates(abs_delta=10), 50, 1, 40, NORMAL, "none"),
    (rates(abs_delta=10), 50, 1, 39.999, ANOMALY, "rate_abs_delta"),
    # rel_delta 20 %: of |prev|; exactly 20 % does not fire; prev 0 → skipped
    (rates(rel_delta=20), 50, 1, 60, NORMAL, "none"),
    (rates(rel_delta=20), 50, 1, 60.01, ANOMALY, "rate_rel_delta"),
    (rates(rel_delta=20), -50, 1, -40, NORMAL, "none"),
    (rates(rel_delta=20), -50, 1, -39.99, ANOMALY, "rate_rel_delta"),
    (rates(rel_delta=20), 0, 1, 1e9, NORMAL, "none"),
    # abs_slope 2/s: |Δ|/Δt; exactly on it does not fire; Δt ≤ 0 → skipped
    (rates(abs_slope=2), 10, 5, 20, NORMAL, "none"),
    (rates(abs_slope=2), 10, 5, 20.01, ANOMALY, "rate_abs_slope"),
    (rates(abs_slope=2), 10, 0.5, 11, NORMAL, "none"),
    (rates(abs_slope=2), 10, 0.5, 11.01, ANOMALY, "rate_abs_slope"),
    # rel_slope 10 %/s of |prev|; prev 0 → skipped
    (rates(rel_slope=10), 100, 2, 120, NORMAL, "none"),
    (rates(rel_slope=10), 100, 2, 120.01, ANOMALY, "rate_rel_slope"),
    (rates(rel_slope=10), 100, 2, 79.99, ANOMALY, "rate_rel_slope"),
    (rates(rel_slope=10), 0, 2, 5, NORMAL, "none"),
    # order: abs_delta, rel_delta, abs_slope, rel_slope: the first that fires names the rule
    (
        rates(abs_delta=1, rel_delta=1, abs_slope=1, rel_slope=1),
        10,
        1,
        20,
        ANOMALY,
        "rate_abs_delta",
    ),
    (rates(abs_delta=100, rel_delta=1, abs_slope=1), 10, 1, 20, ANOMALY, "rate_rel_delta"),
    (rates(abs_delta=100, abs_slope=1, rel_slope=1), 10, 1, 20, ANOMALY, "rate_abs_slope"),
    (rates(abs_delta=100, abs_slope=100, rel_slope=1), 10, 1, 20, ANOMALY, "rate_rel_slope"),
    # severity from the config
    (rates(Severity.WARNING, abs_delta=1), 0, 1, 5, WARNING, "rate_abs_delta"),
    (rates(Severity.CRITICAL, abs_delta=1), 0, 1, -5, CRITICAL, "rate_abs_delta"),
]


@pytest.mark.parametrize(("config", "prev", "dt", "value", "cls", "rule"), RATE_TABLE)
def test_rate_rules_fire_strictly_beyond_their_limit(
    config: StreamConfig, prev: float, dt: float, value: float, cls: PointClass, rule: str
) -> None:
    verdict = classify(point(value, dt), config, prev, T0)
    assert (verdict.cls, verdict.rule) == (cls, rule)


@pytest.mark.parametrize(
    ("config", "reason"),
    [
        (
            rates(abs_delta=10),
            "change +15 from the previous value 50.0 exceeds the absolute delta limit 10",
        ),
        (
            rates(rel_delta=20),
            "change +15 is 30 % of the previous value 50.0, above the relative delta limit 20 %",
        ),
        (
            rates(abs_slope=2),
            "change +15 in 5 s is 3/s, above the absolute slope limit 2/s",
        ),
        (
            rates(rel_slope=4),
            "change +15 in 5 s is 6 %/s of the previous value 50.0, above the relative slope "
            "limit 4 %/s",
        ),
    ],
)
def test_rate_reason_states_the_numbers(config: StreamConfig, reason: str) -> None:
    assert classify(point(65, 5), config, 50.0, T0).reason == reason


def test_slope_rules_skip_a_point_not_after_the_previous_one() -> None:
    config = rates(abs_slope=1, rel_slope=1)
    assert classify(point(1000, 0), config, 1.0, T0).cls is NORMAL
    assert classify(point(1000, -1), config, 1.0, T0).cls is NORMAL


def test_value_rules_take_precedence_over_rate_rules() -> None:
    config = StreamConfig(
        value_constraints=ValueConstraints(warning_max=30),
        rate_constraints=RateConstraints(abs_delta=1, severity=Severity.CRITICAL),
    )
    verdict = classify(point(35, 1), config, 10.0, T0)
    assert (verdict.cls, verdict.rule) == (WARNING, "warning_zone")


def test_first_point_of_a_stream_has_no_rate_verdict() -> None:
    assert classify(point(1e9), rates(abs_delta=1), None, None).cls is NORMAL


# -- through classify_message: state, late and redelivered points ---------------------------


def batch(*points: DataPoint) -> PointBatch:
    return PointBatch(
        domain="iot", source_id="dev-1", transport="http", received_at=T0, points=list(points)
    )


def fixed(config: StreamConfig | None) -> Any:
    return lambda *_: config


def test_rates_compare_with_the_stream_previous_point_across_batches() -> None:
    state = ClassifierState()
    resolve = fixed(rates(abs_delta=10))
    classify_message(batch(point(10, 0)), resolve, state)
    [[(_, verdict, _)]] = classify_message(batch(point(25, 1)), resolve, state).by_class.values()
    assert (verdict.cls, verdict.rule) == (ANOMALY, "rate_abs_delta")


def test_late_point_is_judged_by_value_rules_only_and_says_so() -> None:
    config = StreamConfig(
        value_constraints=ValueConstraints(warning_max=100),
        rate_constraints=RateConstraints(abs_delta=1),
    )
    state = ClassifierState()
    classify_message(batch(point(10, 10)), fixed(config), state)
    result = classify_message(batch(point(50, 5), point(200, 6)), fixed(config), state)
    normal, warning = result.by_class[NORMAL][0][1], result.by_class[WARNING][0][1]
    assert normal.rule == "none"  # a 40 jump, but late: no rate rule
    assert normal.reason.startswith("late point (the stream is already at 2026-02-25T21:00:10")
    assert normal.reason.endswith("value rules only: value 50.0 is within every configured limit")
    assert warning.rule == "warning_zone" and "late point" in warning.reason
    st = state.get(("iot", "dev-1", "s"))
    assert st is not None and (st.last_value, st.last_ts) == (10.0, T0 + timedelta(seconds=10))


def test_redelivered_point_gets_the_verdict_it_had() -> None:
    state = ClassifierState()
    resolve = fixed(rates(abs_delta=10))
    first = classify_message(batch(point(0, 0), point(50, 1)), resolve, state).by_class
    again = classify_message(batch(point(0, 0), point(50, 1)), resolve, state).by_class
    assert first[ANOMALY][0][1] == again[ANOMALY][0][1]
    assert again[ANOMALY][0][1].rule == "rate_abs_delta"


# -- properties -----------------------------------------------------------------------------

LIMIT_NAMES = (
    "min_value",
    "max_value",
    "alert_min",
    "alert_max",
    "operational_min",
    "operational_max",
    "warning_min",
    "warning_max",
)
finite = st.floats(min_value=-1e6, max_value=1e6, allow_nan=False, allow_infinity=False)
RANK = {NORMAL: 0, ANOMALY: 1, WARNING: 2, CRITICAL: 3}


@st.composite
def value_constraints(draw: st.DrawFn) -> ValueConstraints:
    """Nested zones (the validator's rules): physical ⊇ everything, each pair ordered."""
    # + 0.0 turns -0.0 into 0.0: sorted() keeps [0.0, -0.0] as drawn, an empty range for floats()
    low, high = sorted(x + 0.0 for x in draw(st.lists(finite, min_size=2, max_size=2)))
    limits: dict[str, float | None] = {}
    for lo_name, hi_name in (
        ("min_value", "max_value"),
        ("alert_min", "alert_max"),
        ("operational_min", "operational_max"),
        ("warning_min", "warning_max"),
    ):
        a, b = sorted(
            draw(st.lists(st.floats(min_value=low, max_value=high), min_size=2, max_size=2))
        )
        if lo_name == "min_value":
            a, b = low, high
        limits[lo_name] = draw(st.sampled_from([a, None]))
        limits[hi_name] = draw(st.sampled_from([b, None]))
    return ValueConstraints(**limits)


@given(value_constraints(), finite, st.sampled_from(LIMIT_NAMES), st.floats(0, 1000))
@settings(max_examples=300, deadline=None)
def test_tightening_a_limit_never_lowers_a_severity(
    constraints: ValueConstraints, value: float, name: str, amount: float
) -> None:
    limit = getattr(constraints, name)
    if limit is None:
        return
    tighter_limit = limit + amount if "min" in name else limit - amount
    doc = constraints.model_dump()
    doc[name] = tighter_limit
    try:
        tighter = ValueConstraints(**doc)
    except ValueError:  # the tighter limit left the physical range or crossed its pair
        return
    before = classify(point(value), StreamConfig(value_constraints=constraints))
    after = classify(point(value), StreamConfig(value_constraints=tighter))
    assert RANK[after.cls] >= RANK[before.cls]


@given(value_constraints(), finite)
@settings(max_examples=300, deadline=None)
def test_a_value_inside_every_limit_is_normal(constraints: ValueConstraints, value: float) -> None:
    c = constraints
    inside = (
        (c.min_value is None or value >= c.min_value)
        and (c.max_value is None or value <= c.max_value)
        and (c.alert_min is None or value > c.alert_min)
        and (c.alert_max is None or value < c.alert_max)
        and (c.operational_min is None or value >= c.operational_min)
        and (c.operational_max is None or value <= c.operational_max)
        and (c.warning_min is None or value > c.warning_min)
        and (c.warning_max is None or value < c.warning_max)
    )
    verdict = classify(point(value), StreamConfig(value_constraints=constraints))
    assert (verdict.cls is NORMAL) == inside


positive = st.floats(min_value=1e-3, max_value=1e4)


# Integer values: their sums and differences are exact in floats, so a change exactly on a
# limit is the same number in both directions.
@given(
    st.integers(-(10**6), 10**6),
    st.integers(0, 10**4),
    st.integers(1, 10**4),
    st.sampled_from(["abs_delta", "rel_delta", "abs_slope", "rel_slope"]),
    st.integers(1, 10**4),
)
@settings(max_examples=300, deadline=None)
def test_rate_rules_are_symmetric_in_sign(
    prev: int, change: int, seconds: int, rule: str, limit: int
) -> None:
    config = rates(**{rule: limit})
    up = classify(point(prev + change, seconds), config, float(prev), T0)
    down = classify(point(prev - change, seconds), config, float(prev), T0)
    assert (up.cls, up.rule) == (down.cls, down.rule)
    # and a mirrored stream behaves the same as the original
    mirrored = classify(point(-(prev + change), seconds), config, float(-prev), T0)
    assert (mirrored.cls, mirrored.rule) == (up.cls, up.rule)


@given(finite, finite, st.floats(min_value=0.001, max_value=1e4), positive, positive)
@settings(max_examples=300, deadline=None)
def test_raising_a_rate_limit_never_raises_the_class(
    prev: float, value: float, seconds: float, limit: float, extra: float
) -> None:
    strict = classify(point(value, seconds), rates(abs_delta=limit, rel_slope=limit), prev, T0)
    loose = classify(
        point(value, seconds), rates(abs_delta=limit + extra, rel_slope=limit + extra), prev, T0
    )
    assert RANK[loose.cls] <= RANK[strict.cls]
