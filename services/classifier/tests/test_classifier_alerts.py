"""Alert lifecycle per stream (pure, through classify_message), staleness, checkpoint form."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

from classifier.alerts import alert_id, staleness_events
from classifier.classify import ClassifierState, classify_message
from classifier.state import (
    CHUNK_STREAMS,
    source_doc_from_json,
    source_doc_json,
    source_doc_key,
)
from tributary_contracts import (
    AlertEvent,
    AlertEventKind,
    DataPoint,
    PointBatch,
    PointClass,
    RateConstraints,
    StreamConfig,
    ValueConstraints,
)

T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)
KEY = ("iot", "dev-1", "temp")
OPENED, ESCALATED, CLOSED = AlertEventKind.OPENED, AlertEventKind.ESCALATED, AlertEventKind.CLOSED
WARNING, CRITICAL = PointClass.WARNING, PointClass.CRITICAL


def config(n: int = 3, cooldown: float = 0, **extra: Any) -> StreamConfig:
    """warning at ≥ 30, critical at ≥ 60; n consecutive; cooldown seconds."""
    result = StreamConfig(
        value_constraints=ValueConstraints(warning_max=30, alert_max=60),
        consecutive_violations_required=n,
        cooldown_seconds=cooldown,
        **extra,
    )
    result.version = 4
    return result


class Stream:
    """Feeds one stream point by point (second i of the series → ts T0 + i s)."""

    def __init__(self, cfg: StreamConfig) -> None:
        self.config = cfg
        self.state = ClassifierState()

    def feed(self, series: dict[float, float]) -> list[AlertEvent]:
        points = [
            DataPoint(stream_id="temp", value=v, ts=T0 + timedelta(seconds=s))
            for s, v in series.items()
        ]
        batch = PointBatch(
            domain="iot", source_id="dev-1", transport="http", received_at=T0, points=points
        )
        result = classify_message(batch, lambda *_: self.config, self.state, T0, 0.0)
        return [event for _, event in result.events]


def kinds(events: list[AlertEvent]) -> list[tuple[str, str]]:
    return [(str(e.event), str(e.severity)) for e in events]


def test_n_consecutive_violations_open_one_alert() -> None:
    s = Stream(config(n=3))
    assert s.feed({0: 20, 1: 35, 2: 40}) == []
    [opened] = s.feed({3: 45})
    assert (opened.event, opened.severity, opened.rule) == (OPENED, WARNING, "warning_zone")
    assert (opened.first_value, opened.first_at) == (35.0, T0 + timedelta(seconds=1))
    assert (opened.last_value, opened.last_at) == (45.0, T0 + timedelta(seconds=3))
    assert (opened.peak_value, opened.violation_count) == (45.0, 3)
    assert (opened.opened_at, opened.closed_at, opened.config_version) == (
        T0 + timedelta(seconds=3),
        None,
        4,
    )
    assert opened.alert_id == alert_id(KEY, "warning", T0 + timedelta(seconds=1))
    assert s.feed({4: 50, 5: 41}) == []  # still open: extended, no new event
    assert AlertEvent.model_validate_json(opened.model_dump_json()) == opened


def test_an_interrupted_run_opens_nothing() -> None:
    s = Stream(config(n=3))
    assert s.feed({0: 35, 1: 36, 2: 20, 3: 37, 4: 38, 5: 10}) == []


def test_recovery_closes_with_the_alert_totals() -> None:
    s = Stream(config(n=2))
    [opened] = s.feed({0: 35, 1: 50})
    [closed] = s.feed({2: 55, 3: 40, 4: 20})
    assert (closed.event, closed.alert_id, closed.closed_at) == (
        CLOSED,
        opened.alert_id,
        T0 + timedelta(seconds=4),
    )
    assert (closed.first_value, closed.last_value, closed.peak_value) == (35.0, 40.0, 55.0)
    assert closed.violation_count == 4
    assert s.state.get(KEY).alert is None  # type: ignore[union-attr]


def test_peak_follows_the_direction_of_the_violation() -> None:
    s = Stream(
        StreamConfig(
            value_constraints=ValueConstraints(warning_min=0), consecutive_violations_required=1
        )
    )
    s.feed({0: -1, 1: -9, 2: -3})
    [closed] = s.feed({3: 5})
    assert closed.peak_value == -9.0


def test_critical_point_escalates_a_warning_alert_close_then_open() -> None:
    s = Stream(config(n=2))
    [opened] = s.feed({0: 35, 1: 36})
    closed, escalated = s.feed({2: 70})
    assert (closed.event, closed.alert_id, closed.closed_at) == (
        CLOSED,
        opened.alert_id,
        T0 + timedelta(seconds=2),
    )
    assert (escalated.event, escalated.severity, escalated.rule) == (
        ESCALATED,
        CRITICAL,
        "critical_zone",
    )
    assert escalated.alert_id != opened.alert_id
    assert (escalated.first_value, escalated.violation_count) == (70.0, 1)
    # a warning point while critical is open: stays one critical alert, no event
    assert s.feed({3: 40}) == []
    [recovered] = s.feed({4: 10})
    assert (recovered.event, recovered.alert_id, recovered.violation_count) == (
        CLOSED,
        escalated.alert_id,
        2,
    )


def test_run_with_a_critical_point_opens_critical() -> None:
    s = Stream(config(n=3))
    [opened] = s.feed({0: 35, 1: 70, 2: 40})
    assert (opened.severity, opened.first_value, opened.peak_value) == (CRITICAL, 35.0, 70.0)


def test_cooldown_suppresses_reopening_until_it_has_passed() -> None:
    s = Stream(config(n=2, cooldown=300))
    assert kinds(s.feed({0: 35, 1: 36, 2: 10})) == [("opened", "warning"), ("closed", "warning")]
    assert s.feed({3: 40, 4: 41, 5: 42, 301: 43}) == []  # 301 - 2 = 299 s < 300 s
    [opened] = s.feed({302: 44})  # 300 s after the close: allowed; the run kept counting
    assert (opened.event, opened.first_value, opened.violation_count) == (OPENED, 40.0, 5)


def test_redelivered_batch_does_not_count_twice() -> None:
    s = Stream(config(n=3))
    assert s.feed({0: 35, 1: 36}) == []
    assert s.feed({0: 35, 1: 36}) == []  # the same points again: duplicates
    assert s.state.get(KEY).run == 2  # type: ignore[union-attr]
    [opened] = s.feed({2: 37})
    assert opened.violation_count == 3


def test_late_points_do_not_move_the_counter_or_the_alert() -> None:
    s = Stream(config(n=2))
    s.feed({10: 35})
    assert s.feed({5: 50, 6: 51, 7: 52}) == []  # late: value rules only, no lifecycle
    assert s.state.get(KEY).run == 1  # type: ignore[union-attr]
    [opened] = s.feed({11: 36})
    assert opened.first_at == T0 + timedelta(seconds=10)


def test_rate_anomaly_opens_an_anomaly_alert_and_a_warning_escalates_it() -> None:
    cfg = config(n=1, rate_constraints=RateConstraints(abs_delta=5))
    s = Stream(cfg)
    s.feed({0: 10})
    [opened] = s.feed({1: 20})
    assert (opened.severity, opened.rule) == (PointClass.ANOMALY, "rate_abs_delta")
    assert kinds(s.feed({2: 31})) == [("closed", "anomaly"), ("escalated", "warning")]


def test_unconfigured_stream_never_alerts() -> None:
    s = Stream(config())
    s.config = None  # type: ignore[assignment]
    assert s.feed({0: 1e9, 1: 1e9, 2: 1e9, 3: 1e9}) == []


def test_staleness_opens_once_and_the_next_point_closes_it() -> None:
    s = Stream(config(n=1, staleness_seconds=60))
    s.feed({0: 20})
    st = s.state.get(KEY)
    assert st is not None and st.seen_at == 0.0
    assert staleness_events(s.state, 59.0, T0, 100) == []
    [(key, opened)] = staleness_events(s.state, 61.0, T0, 100)
    assert (key, opened.event, opened.rule, opened.severity) == (
        KEY,
        OPENED,
        "staleness",
        WARNING,
    )
    assert (opened.last_value, opened.last_at) == (20.0, T0)
    assert opened.reason.startswith("no point for 61 s (staleness limit 60 s)")
    assert staleness_events(s.state, 120.0, T0, 100) == []  # already open
    [closed] = s.feed({200: 21})
    assert (closed.event, closed.alert_id, closed.rule) == (CLOSED, opened.alert_id, "staleness")


def test_staleness_check_is_bounded_per_call() -> None:
    state = ClassifierState()
    cfg = config(staleness_seconds=1)
    for i in range(5):
        points = [DataPoint(stream_id=f"s{i}", value=1.0, ts=T0)]
        batch = PointBatch(
            domain="iot", source_id="dev-1", transport="http", received_at=T0, points=points
        )
        classify_message(batch, lambda *_: cfg, state, T0, 0.0)
    assert len(staleness_events(state, 10.0, T0, 2)) == 2
    assert len(staleness_events(state, 10.0, T0, 10)) == 3
    assert staleness_events(state, 10.0, T0, 10) == []


def test_checkpoint_round_trips_every_field() -> None:
    s = Stream(config(n=2, cooldown=10, staleness_seconds=5))
    s.feed({0: 35, 1: 36, 2: 10, 3: 40, 4: 70})
    staleness_events(s.state, 100.0, T0, 10)
    st = s.state.get(KEY)
    assert st is not None and st.stale_alert is not None and st.last_close_at is not None
    doc = s.state.doc_of[KEY]
    read = source_doc_from_json(source_doc_json(doc, [KEY[2]], s.state.streams, 41, 1))
    assert (read.source, read.chunk, read.chunks, read.covered) == (KEY[:2], 0, 1, 41)
    assert dict(read.states) == {KEY: st}


def test_source_document_round_trips_and_is_chunked() -> None:
    state = ClassifierState()
    cfg = config(n=2)
    ids = [f"s{i}" for i in range(CHUNK_STREAMS + 3)]
    points = [DataPoint(stream_id=sid, value=35.0, ts=T0) for sid in ids]
    batch = PointBatch(
        domain="iot", source_id="dev.1", transport="http", received_at=T0, points=points
    )
    classify_message(batch, lambda *_: cfg, state, T0, 0.0)
    docs = {state.doc_of[("iot", "dev.1", sid)] for sid in ids}
    assert docs == {("iot", "dev.1", 0), ("iot", "dev.1", 1)}
    assert source_doc_key(("iot", "dev.1", 0)) == "iot.dev=2E1"
    assert source_doc_key(("iot", "dev.1", 1)) == "iot.dev=2E1.1"
    restored = dict(
        source_doc_from_json(
            source_doc_json(
                ("iot", "dev.1", 1), state.doc_streams(("iot", "dev.1", 1)), state.streams
            )
        ).states
    )
    assert len(restored) == 3
    assert all(restored[key] == state.streams[key] for key in restored)
    assert all(st.run == 1 for st in restored.values())
