"""``tributary thresholds import`` against the real NATS (and PostgreSQL as the SQL Server
stand-in; a real SQL Server when ``MSSQL_DSN`` is set): configs in the bucket, the report."""

from __future__ import annotations

import asyncio
import io
import os
from pathlib import Path
from typing import Any

import pytest

from tributary_contracts import DEVICES_BUCKET, STREAM_CONFIGS_BUCKET, ensure_jetstream
from tributary_operator.cli import build_parser
from tributary_operator.thresholds_cli import run
from tributary_runtime.devices import DeviceRecord, DeviceRegistry, SensorRecord
from tributary_runtime.settings import ServiceSettings
from tributary_runtime.stream_configs import StreamConfigBucket, StreamScope

pytestmark = pytest.mark.integration

ALERTS = "id,sensor_id,min_value,max_value,is_active\n1,17,-10,40,1\n2,18,0,90,1\n3,19,0,1,0\n"
DELTAS = "id,sensor_id,abs_delta,rel_delta,is_active\n1,17,4,,1\n2,20,abc,,1\n"
DEVICE = "0f6c1b2e-7a51-4c1c-9b1a-3e0b0e7f1a11"


@pytest.fixture
async def setup(servers: Any, bus_prefix: str, jetstream: Any) -> Any:
    settings = ServiceSettings(nats_url=servers.nats_url, bus_prefix=bus_prefix)
    await ensure_jetstream(jetstream, settings.namespace)
    registry = DeviceRegistry(
        await jetstream.key_value(settings.namespace.bucket(DEVICES_BUCKET)), cache_seconds=0
    )
    await registry.put_device(
        DeviceRecord(
            device_uuid=DEVICE,
            sensors=[
                SensorRecord(
                    sensor_uuid="5b0e3a4e-2a7d-4f55-9a4b-9d1c9f0e0a01",
                    sensor_id=17,
                    sensor_type="temperature",
                )
            ],
        )
    )
    bucket = StreamConfigBucket(
        await jetstream.key_value(settings.namespace.bucket(STREAM_CONFIGS_BUCKET))
    )

    async def cli(*args: str) -> tuple[int, list[str], str]:
        out, err = io.StringIO(), io.StringIO()
        parsed = build_parser().parse_args(["thresholds", "import", *args])
        code = await run(parsed, settings, out, err)
        return code, out.getvalue().splitlines(), err.getvalue()

    return cli, bucket


async def test_csv_exports_become_configs_and_the_report_names_every_sensor(
    setup: Any, tmp_path: Path
) -> None:
    cli, bucket = setup
    (tmp_path / "a.csv").write_text(ALERTS)
    (tmp_path / "d.csv").write_text(DELTAS)
    args = ("--alert", str(tmp_path / "a.csv"), "--delta", str(tmp_path / "d.csv"))

    code, lines, _ = await cli(*args)

    assert code == 0
    assert lines == [
        "created   iot/*/17 (range -10..40, delta > 4, iot.temperature)",
        "created   iot/*/18 (range 0..90)",
        "skipped   alert_thresholds row 3 (sensor 19): inactive",
        "skipped   delta_thresholds row 2 (sensor 20): abs_delta 'abc' is not a number",
        "2 created, 0 updated, 0 unchanged, 2 skipped",
    ]
    stored = await bucket.get(StreamScope("iot", "*", "17"))
    assert stored is not None and stored.config is not None
    config = stored.config
    assert (config.value_constraints.min_value, config.value_constraints.max_value) == (-10, 40)
    assert config.rate_constraints is not None and config.rate_constraints.abs_delta == 4
    assert (config.stream_type, config.consecutive_violations_required) == ("iot.temperature", 1)

    # again: unchanged; a config changed since is kept unless --replace
    assert (await cli(*args))[1][-1] == "0 created, 0 updated, 2 unchanged, 2 skipped"
    (tmp_path / "a.csv").write_text(ALERTS.replace("1,17,-10,40,1", "1,17,-10,45,1"))
    kept = await cli(*args)
    assert any(line.startswith("skipped   iot/*/17") and "--replace" in line for line in kept[1])
    replaced = await cli(*args, "--replace")
    assert "updated   iot/*/17 (range -10..45, delta > 4, iot.temperature)" in replaced[1]


async def test_dry_run_stores_nothing_and_unreadable_files_exit_2(
    setup: Any, tmp_path: Path
) -> None:
    cli, bucket = setup
    (tmp_path / "a.csv").write_text(ALERTS)
    code, lines, _ = await cli("--alert", str(tmp_path / "a.csv"), "--dry-run")
    assert code == 0 and lines[-1] == "(--dry-run: nothing was stored)"
    assert await bucket.get(StreamScope("iot", "*", "17")) is None
    missing = await cli("--alert", str(tmp_path / "nope.csv"))
    assert missing[0] == 2 and "cannot read the thresholds" in missing[2]


def _create_tables(dsn: str) -> None:
    from sqlalchemy import text

    from tributary_sqlserver import build_engine, engine_url, is_stand_in

    ddl = Path(__file__).resolve().parents[3] / "deploy/sqlserver/003_legacy_thresholds.sql"
    engine = build_engine(dsn)
    with engine.begin() as conn:
        if is_stand_in(engine_url(dsn)):
            conn.execute(text("CREATE SCHEMA IF NOT EXISTS dbo"))
            conn.execute(
                text(
                    "CREATE TABLE dbo.alert_thresholds (id serial, sensor_id int, min_value float,"
                    " max_value float, is_active boolean DEFAULT true)"
                )
            )
            conn.execute(
                text(
                    "CREATE TABLE dbo.delta_thresholds (id serial, sensor_id int, abs_delta float,"
                    " rel_delta float, is_active boolean DEFAULT true)"
                )
            )
        else:
            for statement in ddl.read_text().split(";"):
                if "CREATE TABLE" in statement:
                    conn.execute(text(statement))
            conn.execute(text("DELETE FROM dbo.alert_thresholds WHERE sensor_id IN (17, 18)"))
            conn.execute(text("DELETE FROM dbo.delta_thresholds WHERE sensor_id IN (17, 18)"))
        conn.execute(
            text(
                "INSERT INTO dbo.alert_thresholds (sensor_id, min_value, max_value) VALUES"
                " (17, -10, 40), (18, 0, 90)"
            )
        )
        conn.execute(
            text(
                "INSERT INTO dbo.delta_thresholds (sensor_id, abs_delta, rel_delta) VALUES"
                " (17, NULL, 15)"
            )
        )
    engine.dispose()


async def test_the_legacy_database_is_read_through_the_mssql_dsn(
    setup: Any, database_dsn: str, servers: Any
) -> None:
    """On SQL Server when MSSQL_DSN is set; else on the PostgreSQL stand-in of dbo."""
    import asyncpg

    cli, bucket = setup
    dsn = os.environ.get("MSSQL_DSN")
    if dsn is None:
        admin = await asyncpg.connect(servers.postgres_dsn)
        await admin.execute(f'CREATE DATABASE "{database_dsn.rpartition("/")[2]}"')
        await admin.close()
        dsn = database_dsn
    await asyncio.to_thread(_create_tables, dsn)

    code, lines, err = await cli("--mssql-dsn", dsn)

    assert code == 0, err
    assert "created   iot/*/17 (range -10..40, delta > 15 %, iot.temperature)" in lines
    assert "created   iot/*/18 (range 0..90)" in lines
    stored = await bucket.get(StreamScope("iot", "*", "17"))
    assert stored is not None and stored.config is not None
    assert stored.config.rate_constraints is not None
    assert stored.config.rate_constraints.rel_delta == 15
