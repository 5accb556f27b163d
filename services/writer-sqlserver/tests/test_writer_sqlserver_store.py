"""The writer's statements against a real database (the PostgreSQL stand-in, same metadata):
idempotency, latest upsert, alert and event close-before-open, procedure mode."""

from __future__ import annotations

import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine

from tributary_contracts import PointClass
from writer_sqlserver.database import build_engine
from writer_sqlserver.errors import Failure, classify_error, describe_error
from writer_sqlserver.schema import alerts, ml_events, sensor_readings, sensor_readings_latest
from writer_sqlserver.store import LegacyStore, batch_readings

from .conftest import T0_NAIVE, at, build_batch, rows, settings_for

pytestmark = pytest.mark.integration

NOW = T0_NAIVE.replace(year=2027)


def store(engine: Engine, mode: str = "tables") -> LegacyStore:
    return LegacyStore(engine, mode, clock=lambda: NOW)  # type: ignore[arg-type]


def readings(values: list[tuple[int, float, float]], cls: PointClass = PointClass.NORMAL):
    found, _, refused = batch_readings(build_batch(values, cls=cls))
    assert refused == []
    return found


def test_normal_readings_are_stored_once_however_often_written(legacy_engine: Engine) -> None:
    batch = readings([(17, 0, 20.5), (17, 1, 21.0), (18, 0, 5.0), (17, 1, 99.0)])
    store(legacy_engine).write(batch)
    store(legacy_engine).write(batch)  # redelivery
    store(legacy_engine).write(readings([(17, 1, 21.0)]))  # a retry of one point alone
    assert rows(legacy_engine, sensor_readings, "sensor_id", "device_timestamp", "value",
                "ingest_timestamp") == [
        (17, at(0), 20.5, at(300)), (17, at(1), 21.0, at(300)), (18, at(0), 5.0, at(300)),
    ]


def test_latest_holds_each_sensors_newest_reading_whatever_the_arrival_order(
    legacy_engine: Engine,
) -> None:
    s = store(legacy_engine)
    s.write(readings([(17, 5, 25.0), (18, 0, 1.0)]))
    s.write(readings([(17, 3, 23.0), (17, 9, 29.0), (17, 7, 27.0)]))  # older and newer
    s.write(readings([(18, -10, 0.5)]))  # late: older than the stored latest
    s.write(readings([(19, 0, 7.0)], cls=PointClass.WARNING))  # a warning is a real value
    assert rows(legacy_engine, sensor_readings_latest, "sensor_id", "device_timestamp",
                "value", "updated_at") == [
        (17, at(9), 29.0, NOW), (18, at(0), 1.0, NOW), (19, at(0), 7.0, NOW),
    ]


def test_critical_points_open_one_alert_per_sensor_closing_the_previous_first(
    legacy_engine: Engine,
) -> None:
    s = store(legacy_engine)
    s.write(readings([(17, 0, 130.0), (18, 0, -50.0)], PointClass.CRITICAL))
    s.write(readings([(17, 10, 131.0), (17, 20, 132.0)], PointClass.CRITICAL))
    expected = [
        (17, at(0), 130.0, "resolved", at(10)),
        (17, at(10), 131.0, "resolved", at(20)),
        (17, at(20), 132.0, "active", None),
        (18, at(0), -50.0, "active", None),
    ]
    cols = ("sensor_id", "triggered_at", "triggered_value", "status", "resolved_at")
    assert rows(legacy_engine, alerts, *cols) == expected
    # Critical points are readings too, but not the latest value (legacy: only clean data).
    assert rows(legacy_engine, sensor_readings, "sensor_id", "device_timestamp") == [
        (17, at(0)), (17, at(10)), (17, at(20)), (18, at(0)),
    ]
    assert rows(legacy_engine, sensor_readings_latest, "sensor_id") == []
    # Redelivery of both batches, and a late critical point, change no alert.
    s.write(readings([(17, 0, 130.0), (18, 0, -50.0)], PointClass.CRITICAL))
    s.write(readings([(17, 10, 131.0), (17, 20, 132.0), (17, 15, 140.0)], PointClass.CRITICAL))
    assert rows(legacy_engine, alerts, *cols) == expected
    assert rows(legacy_engine, alerts, "sensor_id", "severity", "message", "created_at")[0] == (
        17, "critical", "value 130.0 (critical)", NOW,
    )


def test_anomalies_become_delta_spike_events_one_active_per_sensor(
    legacy_engine: Engine,
) -> None:
    s = store(legacy_engine)
    s.write(readings([(17, 0, 40.0)], PointClass.ANOMALY))
    s.write(readings([(17, 30, 80.0), (21, 1, 3.0)], PointClass.ANOMALY))
    s.write(readings([(17, 30, 80.0)], PointClass.ANOMALY))  # redelivered
    assert rows(legacy_engine, ml_events, "sensor_id", "event_type", "event_timestamp",
                "value", "status", "resolved_at", "severity") == [
        (17, "DELTA_SPIKE", at(0), 40.0, "resolved", at(30), "warning"),
        (17, "DELTA_SPIKE", at(30), 80.0, "active", None, "warning"),
        (21, "DELTA_SPIKE", at(1), 3.0, "active", None, "warning"),
    ]
    # The legacy WARNING pipeline stores the event only: no reading, no latest value.
    assert rows(legacy_engine, sensor_readings, "sensor_id") == []


def test_a_failed_transaction_leaves_nothing_behind(legacy_engine: Engine) -> None:
    with legacy_engine.begin() as conn:  # a legacy CHECK the writer does not know about
        conn.execute(text("ALTER TABLE dbo.sensor_readings ADD CHECK (value < 1000)"))
    with pytest.raises(Exception, match=r"(?i)check"):
        store(legacy_engine).write(readings([(17, 0, 1.0), (18, 0, 5000.0)]))
    assert rows(legacy_engine, sensor_readings, "sensor_id") == []
    assert rows(legacy_engine, sensor_readings_latest, "sensor_id") == []


STANDIN_PROCEDURE = """
CREATE TABLE dbo.sp_calls (n serial, sensor_id int, value float8, device_timestamp timestamp);
CREATE PROCEDURE dbo.sp_insert_reading_and_check_threshold(
    p_sensor_id int, p_value float8, p_device_timestamp timestamp)
LANGUAGE plpgsql AS $$
BEGIN
    INSERT INTO dbo.sp_calls (sensor_id, value, device_timestamp)
    VALUES (p_sensor_id, p_value, p_device_timestamp);
END $$;
"""


def test_procedure_mode_calls_the_legacy_procedure_once_per_reading_in_time_order(
    standin_engine: Engine,
) -> None:
    legacy_engine = standin_engine  # the recording stand-in procedure is PL/pgSQL
    with legacy_engine.begin() as conn:
        conn.execute(text(STANDIN_PROCEDURE))
    batch = readings([(17, 2, 22.0), (18, 1, 5.0), (17, 0, 20.0), (17, 2, 22.0)],
                     PointClass.CRITICAL)
    counts = store(legacy_engine, "procedure").write(batch)
    assert counts.procedure_calls == 3
    with legacy_engine.connect() as conn:
        calls = conn.execute(text(
            "SELECT sensor_id, value, device_timestamp FROM dbo.sp_calls ORDER BY n")).all()
    assert [tuple(c) for c in calls] == [(17, 20.0, at(0)), (18, 5.0, at(1)), (17, 22.0, at(2))]
    assert rows(legacy_engine, sensor_readings, "sensor_id") == []  # the procedure owns writes


def test_procedure_mode_with_the_shipped_reference_procedure_on_sql_server(
    mssql_dsn: str,
) -> None:
    engine = build_engine(settings_for(mssql_dsn, mssql_write_mode="procedure"))
    try:
        batch = readings([(17, 2, 22.0), (17, 0, 20.0)], PointClass.NORMAL)
        store(engine, "procedure").write(batch)
        store(engine, "procedure").write(batch)  # idempotent by the procedure's contract
        assert rows(engine, sensor_readings, "sensor_id", "device_timestamp", "value") == [
            (17, at(0), 20.0), (17, at(2), 22.0)]
        assert rows(engine, sensor_readings_latest, "sensor_id", "device_timestamp") == [
            (17, at(2))]
    finally:
        engine.dispose()


def test_sql_server_refusals_are_classified_permanent_by_sqlstate(legacy_engine: Engine) -> None:
    with legacy_engine.begin() as conn:
        conn.execute(text("ALTER TABLE dbo.sensor_readings ADD CHECK (value < 1000)"))
    with pytest.raises(Exception) as refused:
        store(legacy_engine).write(readings([(17, 0, 5000.0)]))
    assert classify_error(refused.value) is Failure.PERMANENT
    assert describe_error(refused.value)[:2] == "23"
