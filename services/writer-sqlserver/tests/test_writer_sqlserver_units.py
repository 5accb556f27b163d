"""Table-driven tests of the pure parts: point → reading, close-before-open and latest plans,
the transient/permanent table, settings and the engine URL."""

from __future__ import annotations

import subprocess
import sys

import psycopg2
import pyodbc
import pytest
from sqlalchemy import exc as sa_exc

from tributary_contracts import ClassifiedPoint, LegacyIds, PointClass
from tributary_runtime.settings import load_settings
from writer_sqlserver.database import engine_url
from writer_sqlserver.errors import Failure, classify_error, describe_error
from writer_sqlserver.settings import WriterSqlServerSettings
from writer_sqlserver.store import (
    PlannedEvent,
    Reading,
    UnmappablePoint,
    _message,
    batch_readings,
    plan_events,
    plan_latest,
    sensor_id_of,
)

from .conftest import T0, at, build_batch, settings_for


def reading(sensor_id: int, seconds: float, value: float = 1.0) -> Reading:
    return Reading(sensor_id, value, at(seconds), PointClass.CRITICAL, "r", at(300))


def point(stream_id: str, legacy: int | None = None) -> ClassifiedPoint:
    return ClassifiedPoint(stream_id=stream_id, value=1.0, ts=T0, reason="r", rule="none",
                           legacy=LegacyIds(sensor_id=legacy) if legacy is not None else None)


@pytest.mark.parametrize(("stream_id", "legacy", "expected"), [
    ("17", 17, 17),
    ("temperature", 42, 42),  # legacy id wins over the stream id
    ("17", None, 17),  # the contract: stream_id is the sensor id as text
    ("-3", None, -3),
    ("2147483647", None, 2147483647),
])
def test_sensor_id_comes_from_legacy_ids_or_an_integer_stream_id(
    stream_id: str, legacy: int | None, expected: int
) -> None:
    assert sensor_id_of(point(stream_id, legacy)) == expected


@pytest.mark.parametrize(("stream_id", "legacy", "message"), [
    ("cpu_usage", None, "stream_id 'cpu_usage' is not an integer sensor id"),
    ("١٧", None, "is not an integer sensor id"),  # Arabic-Indic digits are not an INT
    ("--5", None, "is not an integer sensor id"),
    ("99999999999999999999999", None, "is not an integer sensor id"),
    ("2147483648", None, "sensor_id 2147483648 does not fit the legacy INT column"),
    ("x", -(2**31) - 1, "does not fit the legacy INT column"),
])
def test_points_without_a_usable_sensor_id_are_refused_with_a_reason(
    stream_id: str, legacy: int | None, message: str
) -> None:
    with pytest.raises(UnmappablePoint, match=message):
        sensor_id_of(point(stream_id, legacy))


def test_batch_readings_keeps_good_points_and_names_the_refused_ones() -> None:
    batch = build_batch([(17, 0, 1.0), (18, 1, 2.0)], cls=PointClass.NORMAL)
    batch.points[1] = point("not-a-sensor")
    readings, indexes, refused = batch_readings(batch)
    assert [(r.sensor_id, r.ts, r.received_at) for r in readings] == [(17, at(0), at(300))]
    assert indexes == [0]
    assert [(i, type(e)) for i, e in refused] == [(1, UnmappablePoint)]


def test_rejected_points_have_no_legacy_table() -> None:
    readings, _, refused = batch_readings(build_batch([(17, 0, 1.0)], cls=PointClass.REJECTED))
    assert readings == []
    assert "class 'rejected' has no table in the legacy schema" in str(refused[0][1])


@pytest.mark.parametrize(("reason", "expected_bytes"), [
    ("short", 10), ("é" * 600, 1000), ("😀" * 300, 1000), ("a" + "😀" * 300, 998),  # no half pair
])
def test_alert_messages_fit_nvarchar_500_counted_in_utf16_units(
    reason: str, expected_bytes: int
) -> None:
    assert len(_message(reason).encode("utf-16-le")) == expected_bytes


def test_plan_events_closes_the_active_row_then_opens_in_time_order() -> None:
    closes, inserts = plan_events(
        [reading(17, 20), reading(17, 10), reading(18, 5), reading(17, 10, 99.0)],
        newest={17: at(0)},
    )
    assert closes == [(17, at(10))]
    assert inserts == [
        PlannedEvent(reading(17, 10), resolved_at=at(20)),
        PlannedEvent(reading(17, 20), resolved_at=None),
        PlannedEvent(reading(18, 5), resolved_at=None),
    ]


def test_plan_events_ignores_points_not_newer_than_the_stored_ones() -> None:
    assert plan_events([reading(17, 0), reading(17, -5)], newest={17: at(0)}) == ([], [])


def test_plan_latest_updates_newer_inserts_unknown_and_skips_older() -> None:
    updates, inserts = plan_latest(
        [reading(17, 5), reading(17, 9), reading(18, 1), reading(19, 0)],
        current={17: at(7), 18: at(1)},
    )
    assert (updates, inserts) == ([reading(17, 9)], [reading(19, 0)])


def odbc_error(cls: type[Exception], sqlstate: str, message: str) -> sa_exc.DBAPIError:
    """A pyodbc error as SQLAlchemy raises it from SQL Server."""
    orig = cls(sqlstate, f"[{sqlstate}] [FreeTDS][SQL Server]{message} (0) (SQLExecDirectW)")
    return sa_exc.DBAPIError.instance("INSERT …", None, orig, pyodbc.Error)


@pytest.mark.parametrize(("sqlstate", "cls", "message", "expected"), [
    ("08S01", pyodbc.OperationalError, "Communication link failure", Failure.TRANSIENT),
    ("08001", pyodbc.OperationalError, "Unable to connect", Failure.TRANSIENT),
    ("40001", pyodbc.Error, "Transaction was deadlocked (1205)", Failure.TRANSIENT),
    ("HYT00", pyodbc.OperationalError, "Query timeout expired", Failure.TRANSIENT),
    ("HY000", pyodbc.Error, "Lock request time out period exceeded (1222)", Failure.TRANSIENT),
    ("IM002", pyodbc.InterfaceError, "Data source name not found", Failure.TRANSIENT),
    ("28000", pyodbc.InterfaceError, "Login failed for user 'sa' (18456)", Failure.TRANSIENT),
    ("42S02", pyodbc.ProgrammingError, "Invalid object name 'dbo.alerts' (208)",
     Failure.TRANSIENT),
    ("42000", pyodbc.ProgrammingError, "The INSERT permission was denied (229)",
     Failure.TRANSIENT),
    ("23000", pyodbc.IntegrityError, "Violation of UNIQUE KEY constraint (2627)",
     Failure.PERMANENT),
    ("23000", pyodbc.IntegrityError, "The INSERT statement conflicted with the FOREIGN KEY "
     "constraint (547)", Failure.PERMANENT),
    ("22001", pyodbc.DataError, "String or binary data would be truncated (8152)",
     Failure.PERMANENT),
    ("22003", pyodbc.DataError, "Arithmetic overflow error (8115)", Failure.PERMANENT),
    ("22007", pyodbc.DataError, "Conversion failed when converting date (241)",
     Failure.PERMANENT),
])
def test_sql_server_errors_are_split_by_sqlstate(
    sqlstate: str, cls: type[Exception], message: str, expected: Failure
) -> None:
    error = odbc_error(cls, sqlstate, message)
    assert classify_error(error) is expected
    assert describe_error(error).startswith(f"{sqlstate}: [{sqlstate}] [FreeTDS][SQL Server]")


def test_standin_and_client_side_errors_are_classified_too() -> None:
    class CheckViolation(psycopg2.IntegrityError):
        pgcode = "23514"

    stand_in = sa_exc.DBAPIError.instance("INSERT …", None, CheckViolation("violates check"),
                                          psycopg2.Error)
    assert classify_error(stand_in) is Failure.PERMANENT
    assert describe_error(stand_in) == "23514: violates check"
    assert classify_error(UnmappablePoint("no sensor id")) is Failure.PERMANENT
    assert classify_error(sa_exc.TimeoutError("pool exhausted")) is Failure.TRANSIENT
    assert classify_error(ConnectionResetError()) is Failure.TRANSIENT
    assert classify_error(RuntimeError("unknown")) is Failure.TRANSIENT


@pytest.mark.parametrize(("dsn", "driver", "expected"), [
    ("mssql://sa:pw@db:1433/iot", "FreeTDS",
     "mssql+pyodbc://sa:***@db:1433/iot?TDS_Version=7.4&driver=FreeTDS"),
    ("mssql://sa:pw@db:1433/iot", "ODBC Driver 18 for SQL Server",
     "mssql+pyodbc://sa:***@db:1433/iot?driver=ODBC+Driver+18+for+SQL+Server"),
    ("mssql+pyodbc://sa:pw@db/iot?driver=ODBC+Driver+17+for+SQL+Server", "FreeTDS",
     "mssql+pyodbc://sa:***@db/iot?driver=ODBC+Driver+17+for+SQL+Server"),
    ("postgresql://postgres@127.0.0.1:5432/t", "FreeTDS",
     "postgresql+psycopg2://postgres@127.0.0.1:5432/t"),
])
def test_engine_url_applies_the_odbc_driver_setting(dsn: str, driver: str, expected: str) -> None:
    url = engine_url(settings_for(dsn, mssql_odbc_driver=driver))
    assert url.render_as_string(hide_password=True) == expected


def test_the_service_refuses_to_start_without_mssql_dsn() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "writer_sqlserver"], env={"PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )
    assert (proc.returncode, proc.stderr.strip()) == (
        2, "invalid setting MSSQL_DSN: Field required")


@pytest.mark.parametrize(("env", "line"), [
    ({"MSSQL_DSN": "mysql://root@db/iot"}, "invalid setting MSSQL_DSN: Value error, scheme "
     "'mysql' not supported; use one of mssql, mssql+pyodbc, postgresql, postgresql+psycopg2"),
    ({"MSSQL_DSN": "not a url"}, "invalid setting MSSQL_DSN: Value error, must be a URL like "
     "mssql://user:password@host:1433/database"),
    ({"MSSQL_DSN": "mssql://sa@db/iot", "MSSQL_WRITE_MODE": "sp"},
     "invalid setting MSSQL_WRITE_MODE: Input should be 'tables' or 'procedure'"),
    ({"MSSQL_DSN": "mssql://sa@db/iot", "SINK_ROUTES": "iot=oracle"},
     "invalid setting SINK_ROUTES: Value error, SINK_ROUTES entry 'iot=oracle': sink must be "
     "one of postgres, sqlserver"),
])
def test_bad_settings_exit_2_with_one_line_naming_the_variable(
    env: dict[str, str], line: str, monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(SystemExit) as exited:
        load_settings(WriterSqlServerSettings)
    assert (exited.value.code, capsys.readouterr().err.strip()) == (2, line)
