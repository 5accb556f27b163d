"""Golden table: sensors whose thresholds came from the legacy tables (``tributary thresholds
import``) are classified exactly as the legacy ReadingClassifier classified them.

The legacy rules (seed 002, "Clasificación IoT"), per sensor: outside its ``alert_thresholds``
range → ALERT; a change from its previous reading above its ``delta_thresholds`` limit (absolute,
or relative in % of the previous value) → WARNING; else ML_PREDICTION; the range first. The
expected classes are written out by hand from those rules and the tables below; the classifier
runs for real on the configs the importer made from the tables (through ``StreamConfigStore``,
as stored in the bucket), and the imported per-sensor config wins over the sensor type's default.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from classifier.classify import ClassifierState, classify_message
from classifier.config_store import StreamConfigStore
from tributary_contracts import DataPoint, LegacyIds, PointBatch, PointClass, stream_config_key
from tributary_operator.thresholds import merge_rows, read_csv, stream_config_of
from tributary_runtime.stream_configs import encode

T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)
ML, WARN, ALERT = "ML_PREDICTION", "WARNING", "ALERT"
LEGACY_OF = {PointClass.CRITICAL: ALERT, PointClass.ANOMALY: WARN, PointClass.NORMAL: ML}

ALERT_THRESHOLDS = """id,sensor_id,min_value,max_value,is_active
1,101,10,30,1
2,102,,50,1
3,103,-5,,1
4,104,0,100,1
5,105,0,40,0
6,107,15,25,1
"""
DELTA_THRESHOLDS = """id,sensor_id,abs_delta,rel_delta,is_active
1,101,3,,1
2,102,,10,1
3,104,5,20,1
4,106,2,,1
5,107,1,,0
"""
TYPES = {101: "temperature", 104: "humidity", 107: "temperature"}

GOLDEN = [
    # (case, sensor_id, readings in time order, legacy class of each)
    ("inside the range, small steps", 101, [20.0, 21.0, 23.5], [ML, ML, ML]),
    ("above the sensor's max (not the type's 125)", 101, [20.0, 31.0], [ML, ALERT]),
    ("below the sensor's min", 101, [20.0, 9.5], [ML, ALERT]),
    ("on the limits is inside", 101, [10.0, 12.0, 13.0], [ML, ML, ML]),
    ("delta above 3 (not the type's 10)", 101, [20.0, 23.5], [ML, WARN]),
    ("delta exactly 3 is clean", 101, [20.0, 23.0], [ML, ML]),
    ("range wins over the spike", 101, [20.0, 35.0], [ML, ALERT]),
    ("max only; from -1000 to 40 is a 104 % change", 102, [-1000.0, 40.0, 51.0], [ML, WARN, ALERT]),
    ("relative delta above 10 %", 102, [40.0, 44.5], [ML, WARN]),
    ("relative delta of exactly 10 % is clean", 102, [40.0, 44.0], [ML, ML]),
    ("min only, no delta row: no spike check", 103, [0.0, 1000.0, -6.0], [ML, ML, ALERT]),
    ("both deltas: the absolute fires", 104, [50.0, 56.0], [ML, WARN]),
    ("both deltas: the relative fires", 104, [10.0, 13.0], [ML, WARN]),
    ("inactive alert row: no range", 105, [1000.0, 1001.0], [ML, ML]),
    ("delta row only", 106, [1e6, 1e6 + 2, 1e6 + 5], [ML, ML, WARN]),
    ("inactive delta row: range only", 107, [20.0, 24.0, 26.0], [ML, ML, ALERT]),
]


@pytest.fixture(scope="module")
def store() -> StreamConfigStore:
    sensors, _ = merge_rows(read_csv(ALERT_THRESHOLDS), read_csv(DELTA_THRESHOLDS))
    store = StreamConfigStore()
    for sensor_id, thresholds in sensors.items():
        config = stream_config_of(thresholds, TYPES.get(sensor_id))
        store.apply(stream_config_key("iot", "*", str(sensor_id)), encode(config), 1, "PUT")
    return store


def readings(sensor_id: int, values: list[float]) -> PointBatch:
    stream_type = f"iot.{TYPES[sensor_id]}" if sensor_id in TYPES else None
    return PointBatch(
        domain="iot",
        source_id="0f6c1b2e-7a51-4c1c-9b1a-3e0b0e7f1a11",
        transport="mqtt",
        received_at=T0,
        points=[
            DataPoint(
                stream_id=str(sensor_id),
                value=value,
                ts=T0 + timedelta(minutes=i),
                stream_type=stream_type,
                legacy=LegacyIds(sensor_id=sensor_id),
            )
            for i, value in enumerate(values)
        ],
    )


@pytest.mark.parametrize(("case", "sensor", "values", "legacy"), GOLDEN, ids=[g[0] for g in GOLDEN])
def test_imported_sensor_is_classified_as_the_legacy_classifier_did(
    store: StreamConfigStore, case: str, sensor: int, values: list[float], legacy: list[str]
) -> None:
    batch = readings(sensor, values)
    result = classify_message(batch, store.resolve, ClassifierState())
    by_ts = {
        point.ts: LEGACY_OF[verdict.cls]
        for group in result.by_class.values()
        for point, verdict, _ in group
    }
    assert [by_ts[p.ts] for p in batch.points] == legacy


def test_inactive_rows_are_reported_skipped() -> None:
    sensors, skipped = merge_rows(read_csv(ALERT_THRESHOLDS), read_csv(DELTA_THRESHOLDS))
    assert sorted(sensors) == [101, 102, 103, 104, 106, 107]
    assert skipped == [
        ("alert_thresholds row 5 (sensor 105)", "inactive"),
        ("delta_thresholds row 5 (sensor 107)", "inactive"),
    ]
