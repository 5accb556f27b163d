"""Golden table: the legacy IoT ReadingClassifier's class == the class the classifier gives with
its shipped ``iot.<sensor_type>`` defaults (seed 002, "Clasificación IoT").

The legacy rules, as the seed states them: a reading outside its sensor type's physical range is
an ALERT; a delta spike (change from the sensor's previous reading above the type's delta
threshold) is a WARNING; anything else is clean, ML_PREDICTION. The physical range is checked
first. The expected legacy classes below are written out by hand from those rules (they are not
computed by the code under test). The seeds do not give the legacy numbers; the ranges and delta
thresholds are the shipped defaults' (README of the classifier), and a spike is compared with the
sensor's previous reading, strictly greater than the threshold.

The classifier runs for real: ``classify_message`` over a ``PointBatch`` of the sensor's readings,
configs resolved by ``StreamConfigStore`` from the shipped defaults data file.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from classifier.classify import ClassifierState, classify_message
from classifier.config_store import StreamConfigStore
from tributary_contracts import AlertEventKind, DataPoint, LegacyIds, PointBatch, PointClass

T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)

LEGACY_OF = {
    PointClass.CRITICAL: "ALERT",
    PointClass.ANOMALY: "WARNING",
    PointClass.NORMAL: "ML_PREDICTION",
}
"""The legacy class a new class stands for (warning zones are not configured for IoT)."""

ML, WARN, ALERT = "ML_PREDICTION", "WARNING", "ALERT"

GOLDEN = [
    # (case, sensor_type, readings in time order, legacy class of each reading)
    ("clean temperature", "temperature", [21.5, 22.0, 23.1], [ML, ML, ML]),
    ("above the physical maximum", "temperature", [21.5, 130.0], [ML, ALERT]),
    ("below the physical minimum, first reading", "temperature", [-41.0], [ALERT]),
    ("on the physical maximum is inside", "temperature", [120.0, 125.0], [ML, ML]),
    ("on the physical minimum is inside", "temperature", [-35.0, -40.0], [ML, ML]),
    ("delta spike up", "temperature", [20.0, 35.0], [ML, WARN]),
    ("delta spike down", "temperature", [30.0, 15.0], [ML, WARN]),
    ("delta exactly on the threshold is clean", "temperature", [20.0, 30.0], [ML, ML]),
    ("physical range wins over a spike", "temperature", [20.0, 200.0], [ML, ALERT]),
    ("humidity over 100 %", "humidity", [50.0, 101.0], [ML, ALERT]),
    ("humidity spike", "humidity", [50.0, 75.0], [ML, WARN]),
    ("pressure drifting slowly", "pressure", [1013.0, 1013.5, 1014.2], [ML, ML, ML]),
    ("pressure below the sensor's range", "pressure", [1013.0, 250.0], [ML, ALERT]),
    ("co2 above the sensor's range", "co2", [400.0, 6000.0], [ML, ALERT]),
    ("co2 spike", "co2", [400.0, 1000.0], [ML, WARN]),
    ("voltage sag", "voltage", [230.0, 190.0], [ML, WARN]),
    ("negative current", "current", [5.0, -1.0], [ML, ALERT]),
    ("ph out of the scale", "ph", [7.0, 14.5], [ML, ALERT]),
    ("ph jump", "ph", [7.0, 9.5], [ML, WARN]),
    ("mixed case type from the registry", "Temperature", [20.0, 35.0], [ML, WARN]),
    ("a type without a physical range is always clean", None, [1e6, -1e6], [ML, ML]),
]


def readings(sensor_type: str | None, values: list[float], sensor_id: int = 17) -> PointBatch:
    stream_type = f"iot.{sensor_type.lower()}" if sensor_type else None
    return PointBatch(
        domain="iot",
        source_id="0f6c1b2e-7a51-4c1c-9b1a-3e0b0e7f1a11",
        transport="http",
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


def classes(batch: PointBatch, state: ClassifierState | None = None) -> list[str]:
    """The legacy name of each point's new class, in input order."""
    result = classify_message(
        batch, StreamConfigStore().resolve, ClassifierState() if state is None else state
    )
    by_ts = {
        point.ts: LEGACY_OF[verdict.cls]
        for group in result.by_class.values()
        for point, verdict, _ in group
    }
    return [by_ts[p.ts] for p in batch.points]


@pytest.mark.parametrize(
    ("case", "sensor_type", "values", "legacy"), GOLDEN, ids=[g[0] for g in GOLDEN]
)
def test_new_class_equals_the_legacy_class(
    case: str, sensor_type: str | None, values: list[float], legacy: list[str]
) -> None:
    assert classes(readings(sensor_type, values)) == legacy


def test_a_spike_is_judged_against_the_previous_batch_of_the_same_sensor() -> None:
    state = ClassifierState()
    assert classes(readings("temperature", [20.0]), state) == [ML]
    later = readings("temperature", [36.0])
    later.points[0].ts = T0 + timedelta(minutes=5)
    assert classes(later, state) == [WARN]


def test_the_iot_defaults_do_not_change_the_generic_temperature_type() -> None:
    # 70 °C is a warning under the generic `temperature` default, clean under the legacy rules.
    store = StreamConfigStore()
    generic = store.resolve("infrastructure", "rack-1", "t", "temperature")
    iot = store.resolve("iot", "dev", "17", "iot.temperature")
    assert generic is not None and generic.value_constraints.warning_max == 60
    assert iot is not None and iot.value_constraints.warning_max is None
    assert classes(readings("temperature", [70.0])) == [ML]


def test_one_active_alert_per_sensor_and_the_old_one_closes_before_a_new_one_opens() -> None:
    # clean, spike (WARNING opens), out of range (ALERT: the warning closes, the alert opens),
    # still out of range (same alert), back in range and no spike (the alert closes).
    batch = readings("temperature", [20.0, 35.0, 130.0, 131.0, 125.0])
    result = classify_message(batch, StreamConfigStore().resolve, ClassifierState())
    events = [(e.event, e.severity, e.first_value) for _, e in result.events]
    assert events == [
        (AlertEventKind.OPENED, PointClass.ANOMALY, 35.0),
        (AlertEventKind.CLOSED, PointClass.ANOMALY, 35.0),
        (AlertEventKind.ESCALATED, PointClass.CRITICAL, 130.0),
        (AlertEventKind.CLOSED, PointClass.CRITICAL, 130.0),
    ]
    assert classes(batch) == [ML, WARN, ALERT, ALERT, ML]
