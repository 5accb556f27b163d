"""The ClassifiedBatch JSON the service publishes equals the straightforward pydantic output."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from classifier.classify import ClassifierState, classified_batch, split_by_class
from classifier.encode import classified_batch_json
from tributary_contracts import ClassifiedBatch, PointBatch, PointClass, StreamConfig

T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)
NOW = datetime(2026, 2, 25, 21, 5, 0, 123456, tzinfo=UTC)


def raw_point(value: float, i: int, **fields: Any) -> dict[str, Any]:
    ts = (T0 + timedelta(seconds=i)).isoformat()
    return {"stream_id": "temp", "value": value, "ts": ts} | fields


POINTS = [
    raw_point(20, 0),  # normal, nothing optional
    raw_point(35, 1, stream_type="temperature", sequence=7),  # warning
    raw_point(130, 2, metadata={"core": 0, "tags": ["a", "é"], "nested": {"x": None, "y": 1.5}}),
    raw_point(21.25, 3, legacy={"sensor_id": 17, "device_uuid": "d-1"}),  # normal, legacy ids
    raw_point(70, 4, legacy={"sensor_id": None, "sensor_uuid": "s-9"}, sequence=0),  # critical
    raw_point(0.1, 5, stream_id="other"),  # unconfigured stream: normal, no config
    raw_point(1e16, 6, stream_id="other", ts="2026-02-25T23:00:06.5+02:00"),  # offset kept
    raw_point(-0.0, 7, stream_type="temperature", metadata={"big": 2**80}),  # beyond orjson
    raw_point(40, 8, sequence=2**70),  # warning, beyond orjson
]


def parse(points: list[dict[str, Any]]) -> PointBatch:
    return PointBatch.model_validate_json(
        json.dumps(
            {
                "domain": "iot",
                "source_id": "dev 1.a",
                "transport": "mqtt",
                "received_at": "2026-02-25T21:01:00.000001Z",
                "points": points,
            }
        )
    )


# The last two points hold integers orjson cannot encode: without them the orjson path is taken.
@pytest.mark.parametrize("points", [POINTS, POINTS[:7]], ids=["model-fallback", "orjson"])
def test_fast_json_equals_the_pydantic_model_output(
    temperature_config: StreamConfig, points: list[dict[str, Any]]
) -> None:
    temperature_config.version = 4
    batch = parse(points)

    def resolve(domain: str, source: str, stream: str, stream_type: str | None) -> Any:
        return temperature_config if stream == "temp" else None

    groups = split_by_class(batch, resolve, ClassifierState())
    assert set(groups) == {PointClass.NORMAL, PointClass.WARNING, PointClass.CRITICAL}

    for cls, classified in groups.items():
        fast = ClassifiedBatch.model_validate_json(
            classified_batch_json(batch, cls, NOW, classified)
        )
        model = classified_batch(batch, cls, NOW, classified)
        expected = ClassifiedBatch.model_validate_json(model.model_dump_json())
        assert fast == expected
        assert fast.model_dump() == expected.model_dump()
        assert fast.model_fields_set == expected.model_fields_set
        # the same instants *and* offsets (datetime equality alone ignores the offset)
        assert [p.ts.isoformat() for p in fast.points] == [
            p.ts.isoformat() for p in expected.points
        ]


def test_fast_json_keeps_the_verdicts(temperature_config: StreamConfig) -> None:
    temperature_config.version = 4
    batch = parse(POINTS)

    def resolve(domain: str, source: str, stream: str, stream_type: str | None) -> Any:
        return temperature_config if stream == "temp" else None

    decoded = {
        cls: ClassifiedBatch.model_validate_json(classified_batch_json(batch, cls, NOW, points))
        for cls, points in split_by_class(batch, resolve, ClassifierState()).items()
    }
    rows = {
        cls: [(p.value, p.rule, p.reason, p.config_version) for p in b.points]
        for cls, b in decoded.items()
    }
    assert rows[PointClass.WARNING] == [
        (35.0, "warning_zone", "value 35.0 is at or above the warning maximum 30.0", 4),
        (-0.0, "warning_zone", "value -0.0 is at or below the warning minimum 5.0", 4),
        (40.0, "warning_zone", "value 40.0 is at or above the warning maximum 30.0", 4),
    ]
    assert rows[PointClass.NORMAL][-2:] == [
        (0.1, "none", "no configuration for this stream", None),
        (1e16, "none", "no configuration for this stream", None),
    ]
    assert {b.cls for b in decoded.values()} == set(decoded)
    assert all(b.classified_at == NOW for b in decoded.values())
