from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest
from pydantic import ValidationError

from tributary_contracts import (
    ClassifiedBatch,
    DataPoint,
    PointBatch,
    RateConstraints,
    SinkRoutes,
    StreamConfig,
    ValueConstraints,
    batch_msg_id,
)

T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)


def _batch(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "domain": "infrastructure",
        "source_id": "server-01",
        "transport": "http",
        "received_at": T0.isoformat(),
        "points": [{"stream_id": "cpu_usage", "value": 45.2, "ts": T0.isoformat()}],
    }
    body.update(overrides)
    return body


def test_point_batch_round_trips_through_json() -> None:
    batch = PointBatch.model_validate(_batch())
    assert PointBatch.model_validate_json(batch.model_dump_json()) == batch


def test_timestamps_keep_their_offset_and_compare_as_instants() -> None:
    plus_two = datetime(2026, 2, 25, 23, 0, tzinfo=timezone(timedelta(hours=2)))
    assert DataPoint(stream_id="s", value=1.0, ts=plus_two).ts == T0
    parsed = DataPoint.model_validate_json(
        '{"stream_id": "s", "value": 1, "ts": "2026-02-25T21:00:00Z"}'
    )
    assert parsed.ts == T0 and parsed.ts.utcoffset() == timedelta(0)


def test_timestamps_without_an_offset_are_refused() -> None:
    with pytest.raises(ValidationError, match="timezone"):
        DataPoint(stream_id="s", value=1.0, ts=datetime(2026, 2, 25, 21, 0))


@pytest.mark.parametrize("value", [float("nan"), float("inf"), float("-inf")])
def test_non_finite_values_are_refused(value: float) -> None:
    with pytest.raises(ValidationError, match="finite"):
        DataPoint(stream_id="s", value=value, ts=T0)


@pytest.mark.parametrize(
    ("field", "value", "message"),
    [
        ("domain", "IoT", "pattern"),
        ("domain", "a" * 33, "pattern"),
        ("source_id", "", "at least 1"),
        ("source_id", "x" * 257, "at most 256"),
        ("source_id", "bell\x07", "should match pattern"),
        ("transport", "carrier-pigeon", "transport"),
        ("points", [], "at least 1"),
    ],
)
def test_envelope_errors_name_the_field(field: str, value: object, message: str) -> None:
    with pytest.raises(ValidationError) as info:
        PointBatch.model_validate(_batch(**{field: value}))
    assert field in str(info.value) and message in str(info.value)


def test_batches_hold_at_most_500_points() -> None:
    points = [{"stream_id": "s", "value": i, "ts": T0.isoformat()} for i in range(501)]
    with pytest.raises(ValidationError, match="at most 500"):
        PointBatch.model_validate(_batch(points=points))


def test_metadata_is_limited_to_8_kib() -> None:
    DataPoint(stream_id="s", value=1, ts=T0, metadata={"k": "x" * 8000})
    with pytest.raises(ValidationError, match="8192 bytes"):
        DataPoint(stream_id="s", value=1, ts=T0, metadata={"k": "x" * 8200})


def test_classified_batch_carries_verdict_per_point() -> None:
    batch = ClassifiedBatch.model_validate(
        {
            **_batch(),
            "cls": "critical",
            "classified_at": T0.isoformat(),
            "points": [
                {
                    "stream_id": "t",
                    "value": 130,
                    "ts": T0.isoformat(),
                    "reason": "too hot",
                    "rule": "physical_range",
                    "config_version": 3,
                }
            ],
        }
    )
    assert batch.points[0].rule == "physical_range" and batch.points[0].config_version == 3


def test_msg_id_is_deterministic_and_depends_on_keys_and_class() -> None:
    keys = [("cpu", T0), ("mem", T0)]
    first = batch_msg_id("infrastructure", "s1", keys)
    assert first == batch_msg_id("infrastructure", "s1", list(keys))
    assert first != batch_msg_id("infrastructure", "s2", keys)
    assert first != batch_msg_id("infrastructure", "s1", [("cpu", T0 + timedelta(seconds=1))])
    assert first != batch_msg_id("infrastructure", "s1", keys, cls="normal")
    # Field separators keep ("a.b", "c") and ("a", "b.c")-style ambiguities apart.
    assert batch_msg_id("d", "a", [("bc", T0)]) != batch_msg_id("d", "ab", [("c", T0)])


def test_stream_config_parses_the_architecture_example() -> None:
    config = StreamConfig.model_validate(
        {
            "stream_type": "temperature",
            "unit": "celsius",
            "value_constraints": {
                "min_value": -40,
                "max_value": 125,
                "alert_min": None,
                "alert_max": 60,
                "operational_min": 0,
                "operational_max": 50,
                "warning_min": None,
                "warning_max": 30,
            },
            "rate_constraints": {
                "abs_delta": 10,
                "rel_delta": None,
                "abs_slope": None,
                "rel_slope": None,
                "severity": "warning",
            },
            "consecutive_violations_required": 3,
            "cooldown_seconds": 300,
            "staleness_seconds": None,
        }
    )
    assert config.value_constraints.alert_max == 60
    assert config.rate_constraints == RateConstraints(abs_delta=10, severity="warning")


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({"min_value": 10, "max_value": 0}, "min_value (10.0) must not be greater than max_value"),
        ({"min_value": 0, "max_value": 100, "warning_max": 150}, "warning_max (150.0) lies above"),
        ({"min_value": 0, "alert_min": -5}, "alert_min (-5.0) lies below"),
        ({"operational_min": 5, "operational_max": 1}, "operational_min (5.0) must not be"),
    ],
)
def test_inconsistent_zones_are_refused_with_the_numbers(
    limits: dict[str, float], message: str
) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        ValueConstraints.model_validate(limits)


def test_sink_routes_pick_exact_domain_before_wildcard() -> None:
    routes = SinkRoutes.parse("iot=sqlserver, *=postgres")
    assert routes.sink_for("iot") == "sqlserver"
    assert routes.sink_for("finance") == "postgres"
    assert SinkRoutes.parse("iot=sqlserver").sink_for("finance") is None


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("", "empty"),
        ("iot", "domain=sink"),
        ("iot=mongo", "sink must be one of"),
        ("iot=postgres,iot=sqlserver", "twice"),
    ],
)
def test_sink_routes_refuse_bad_text(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        SinkRoutes.parse(text)


def test_dead_letter_headers_are_one_line_and_deterministic() -> None:
    from tributary_contracts import DLQ_KIND, DLQ_REASON, MSG_ID_HEADER, dead_letter_headers

    first = dead_letter_headers("writer-postgres", "bad_rows", "bad\x00row\n  here", "s", 3, b"x")
    assert first[DLQ_REASON] == "bad row here" and first[DLQ_KIND] == "bad_rows"
    again = dead_letter_headers("writer-postgres", "bad_rows", "bad\x00row\n  here", "s", 3, b"x")
    assert first[MSG_ID_HEADER] == again[MSG_ID_HEADER]
    other = dead_letter_headers("writer-postgres", "bad_rows", "bad row", "s", 3, b"y")
    assert other[MSG_ID_HEADER] != first[MSG_ID_HEADER]


def test_batch_msg_id_tells_apart_times_one_microsecond_apart_and_the_point_count() -> None:
    for base in (T0, datetime(2230, 12, 31, 23, 59, 59, tzinfo=UTC)):
        one_us = [("cpu", base + timedelta(microseconds=1))]
        assert batch_msg_id("d", "s", [("cpu", base)]) != batch_msg_id("d", "s", one_us)
    assert batch_msg_id("d", "s", [("a", T0)]) != batch_msg_id("d", "s", [("a", T0), ("a", T0)])
    assert batch_msg_id("d", "s", [("a", T0)], "x") != batch_msg_id("d", "s\x1fx", [("a", T0)])


def test_alert_settings_default_to_the_seed_and_stored_values_are_kept() -> None:
    from tributary_contracts import StreamConfig

    omitted = StreamConfig.model_validate({"value_constraints": {"warning_max": 80}})
    assert (omitted.consecutive_violations_required, omitted.cooldown_seconds) == (3, 300)
    # What the previous version stored: the whole model, so its 1 and 0 are explicit.
    stored_before = (
        b'{"value_constraints": {"warning_max": 80},'
        b' "consecutive_violations_required": 1, "cooldown_seconds": 0}'
    )
    kept = StreamConfig.model_validate_json(stored_before)
    assert (kept.consecutive_violations_required, kept.cooldown_seconds) == (1, 0)
    assert b'"consecutive_violations_required":3' in omitted.model_dump_json().encode()
