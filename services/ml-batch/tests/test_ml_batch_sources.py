"""Settings, the README's settings table, and the SQL Server source."""

from __future__ import annotations

import asyncio
import os
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ml_batch.job import sqlserver_domains
from ml_batch.load import group_legacy_rows, load_sqlserver
from ml_batch.settings import MlBatchSettings
from tributary_runtime.settings import settings_table
from tributary_sqlserver import build_engine, engine_url

README = Path(__file__).resolve().parents[1] / "README.md"
T = datetime(2026, 3, 1, 12, 0)


def test_readme_settings_table_is_generated_from_the_settings_class() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Settings\n", 1)[1].split("\n\n", 1)[0]
    assert section == settings_table(MlBatchSettings)


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"ML_MODEL_BY_TYPE": "temperature=arima"}, "model must be one of ewma, trend, taylor"),
        ({"ML_MODEL_BY_TYPE": "temperature"}, "must look like 'stream_type=model'"),
        ({"AI_EXPLAINER_URL": "explainer:8003"}, "must start with http:// or https://"),
        ({"SINK_ROUTES": "iot=oracle"}, "sink must be one of postgres, sqlserver"),
        ({"ML_WINDOW_POINTS": "2"}, "greater than or equal to 3"),
    ],
)
def test_bad_settings_are_refused_naming_the_problem(
    monkeypatch: pytest.MonkeyPatch, env: dict[str, str], message: str
) -> None:
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match=message):
        MlBatchSettings()


def test_sqlserver_is_read_only_for_domains_routed_there_and_only_with_a_dsn() -> None:
    routes = "iot=sqlserver,*=postgres"
    assert sqlserver_domains(MlBatchSettings(sink_routes=routes)) == []
    with_dsn = MlBatchSettings(sink_routes=routes, mssql_dsn="DRIVER=x;SERVER=y")
    assert sqlserver_domains(with_dsn) == ["iot"]
    assert sqlserver_domains(MlBatchSettings(mssql_dsn="DRIVER=x")) == []


def test_ml_batch_opens_mssql_urls_with_the_odbc_driver_named_like_the_writer() -> None:
    """The compose/k8s form ``mssql://…`` gets the ODBC driver in the URL (without one, pyodbc
    takes the host for a data source name: IM002), with ml-batch's driver settings."""
    settings = MlBatchSettings(
        mssql_dsn="mssql://sa:pw@sqlserver:1433/iot_monitoring_system",
        mssql_odbc_driver="ODBC Driver 18 for SQL Server",
    )
    url = engine_url(
        settings.mssql_dsn.get_secret_value(), settings.mssql_odbc_driver,
        settings.mssql_tds_version,
    )
    assert (url.drivername, url.host, url.port, url.database) == (
        "mssql+pyodbc", "sqlserver", 1433, "iot_monitoring_system")
    assert dict(url.query) == {"driver": "ODBC Driver 18 for SQL Server"}


@pytest.mark.integration
async def test_ml_batch_reads_the_stand_in_through_the_shared_dsn_parsing(
    migrated_dsn: str,
) -> None:
    """``load_sqlserver`` opens the DSN through tributary_sqlserver (stand-in: PostgreSQL; the
    query itself is T-SQL, so the stand-in answers with a syntax error, not IM002)."""
    from sqlalchemy.exc import ProgrammingError

    with pytest.raises(ProgrammingError, match="syntax error"):
        await asyncio.to_thread(
            load_sqlserver, migrated_dsn, domain="iot", since=datetime.now(UTC), window=3,
            max_streams=1, watermarks={},
        )


def test_legacy_rows_become_windows_and_watermarked_sensors_are_left_out() -> None:
    rows = [
        (17, T, T - timedelta(seconds=20), 1.5),
        (17, T, T - timedelta(seconds=10), 2.5),
        (17, T, T, 3.5),
        (18, T, T - timedelta(seconds=5), 9.0),
        (18, T, T, 9.5),
    ]
    marks = {("iot", "sensor-18", "18"): T.replace(tzinfo=UTC)}  # nothing new for 18
    w = group_legacy_rows(rows, "iot", marks)
    assert w.keys == [("iot", "sensor-17", "17")]
    assert w.last_times == [T.replace(tzinfo=UTC)]
    assert w.rel_times == [[-20.0, -10.0, 0.0]]
    assert w.values == [[1.5, 2.5, 3.5]]
    assert len(group_legacy_rows(rows, "iot", {})) == 2


@pytest.mark.skipif(
    not os.environ.get("MSSQL_TEST_DSN"),
    reason="needs a SQL Server with the legacy schema (MSSQL_TEST_DSN); none on this machine",
)
def test_reads_the_legacy_sensor_readings_of_a_real_sql_server() -> None:
    from sqlalchemy import text

    dsn = os.environ["MSSQL_TEST_DSN"]
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    engine = build_engine(dsn)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM dbo.sensor_readings WHERE sensor_id = 990017"))
        for i in range(12):
            conn.execute(
                text("INSERT INTO dbo.sensor_readings"
                     " (sensor_id, value, device_timestamp, ingest_timestamp)"
                     " VALUES (990017, :v, :t, :t)"),
                {"v": float(i), "t": now - timedelta(seconds=12 - i)},
            )
    w = load_sqlserver(dsn, domain="iot", since=datetime.now(UTC) - timedelta(hours=1),
                       window=10, max_streams=100_000, watermarks={})
    i = w.keys.index(("iot", "sensor-990017", "990017"))
    assert w.values[i] == [float(v) for v in range(2, 12)]
