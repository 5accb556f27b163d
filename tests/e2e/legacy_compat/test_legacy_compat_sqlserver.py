"""The production route ``SINK_ROUTES=iot=sqlserver`` replayed end to end: packets land in the
legacy tables through writer-sqlserver, and ``/sensors/{id}/status`` and
``/devices/{uuid}/readings`` answer from that database (not from PostgreSQL). On SQL Server when
``MSSQL_DSN`` is set; here on its PostgreSQL stand-in (same statements through SQLAlchemy). The
fleet runs with the default ``DEVICE_AUTH_MODE=required``: a keyless packet is refused."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Iterator
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest

from tests.e2e.conftest import fleet_for_test
from tests.e2e.fleet_process import FleetProcess
from tests.e2e.legacy_compat import recordings as rec
from tests.e2e.legacy_compat.conftest import migrate_legacy_estate

pytestmark = [pytest.mark.e2e, pytest.mark.integration]


@pytest.fixture(scope="module")
def standin(servers: Any) -> Iterator[str]:
    if os.environ.get("MSSQL_DSN"):
        yield os.environ["MSSQL_DSN"]
        return
    name = f"legacy_standin_{uuid.uuid4().hex[:8]}"

    async def run(sql: str) -> None:
        conn = await asyncpg.connect(servers.postgres_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()

    asyncio.run(run(f'CREATE DATABASE "{name}"'))
    yield f"{servers.postgres_dsn.rpartition('/')[0]}/{name}"
    asyncio.run(run(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))


@pytest.fixture(scope="module")
def fleet(servers: Any, standin: str, tmp_path_factory: Any) -> Iterator[FleetProcess]:
    gen = fleet_for_test(
        servers,
        skip=("gateway-ws", "csv-importer", "ml-batch", "gateway-mqtt"),
        extra_env={
            "SINK_ROUTES": "iot=sqlserver,*=postgres",
            "MSSQL_DSN": standin,
            "MSSQL_CREATE_SCHEMA": "true",
        },
    )
    running = next(gen)
    migrate_legacy_estate(running, tmp_path_factory.mktemp("legacy-sqlserver"))
    yield running
    next(gen, None)


async def stored_readings(dsn: str, want: int) -> list[tuple[int, float, datetime]]:
    from sqlalchemy import text

    from tributary_sqlserver import build_engine

    def read() -> list[tuple[int, float, datetime]]:
        engine = build_engine(dsn)
        try:
            with engine.connect() as conn:
                rows = conn.execute(
                    text(
                        "SELECT sensor_id, value, device_timestamp FROM dbo.sensor_readings"
                        " WHERE sensor_id IN (501, 502, 503) ORDER BY sensor_id, device_timestamp"
                    )
                ).all()
        finally:
            engine.dispose()
        return [(r[0], r[1], r[2]) for r in rows]

    deadline = time.monotonic() + 20
    rows: list[tuple[int, float, datetime]] = []
    while time.monotonic() < deadline:
        try:
            rows = await asyncio.to_thread(read)
        except Exception:  # the writer creates the tables at start
            rows = []
        if len(rows) >= want:
            break
        await asyncio.sleep(0.3)
    return rows


async def test_packets_land_in_the_legacy_tables_and_status_reads_them(
    fleet: FleetProcess, standin: str
) -> None:
    async with httpx.AsyncClient(base_url=fleet.url("gateway-http"), timeout=10) as client:
        key = {"X-Device-Key": rec.DEVICE_KEY}
        first = await client.post("/ingest/packets", json=rec.PACKET, headers=key)
        spike = await client.post("/ingest/packets", json=rec.PACKET_SPIKE, headers=key)
        keyless = await client.post("/ingest/packets", json=rec.PACKET_KEYLESS)
        assert (first.status_code, spike.status_code) == (200, 200)
        assert (keyless.status_code, keyless.json()) == (
            401,
            {"detail": "missing X-Device-Key header"},
        )

        # the legacy flow: a WARNING (delta spike, 501 at 23.0) goes to dbo.ml_events only
        rows = await stored_readings(standin, want=4)
        assert [(s, v) for s, v, _ in rows] == [
            (501, 20.0),
            (502, 45.0),
            (502, 101.0),
            (503, 1013.25),
        ]

        legacy_key = {"X-API-Key": rec.LEGACY_API_KEY}
        status: Any = None
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = await client.get(f"/sensors/{rec.HUMID}/status", headers=legacy_key)
            if status.status_code == 200 and status.json()["active_alert"]:
                break
            await asyncio.sleep(0.3)
        body = status.json()
        assert status.status_code == 200, status.text
        assert (body["state"], body["latest"]["value"], body["latest"]["classification"]) == (
            "ALERT",
            101.0,
            "ALERT",
        )
        assert body["active_alert"]["rule"] == "physical_range"
        assert body["active_alert"]["alert_id"].startswith("alerts:")  # a dbo.alerts row

        spiked = await client.get(f"/sensors/{rec.TEMP}/status", headers=legacy_key)
        assert spiked.json()["state"] == "WARNING"  # its DELTA_SPIKE row in dbo.ml_events
        assert (spiked.json()["latest"]["value"], spiked.json()["latest"]["cls"]) == (
            23.0,
            "anomaly",
        )
        assert spiked.json()["active_alert"]["rule"] == "delta_spike"

        listed = await client.get(f"/devices/{rec.DEVICE}/readings", headers=legacy_key)
        assert listed.status_code == 200
        assert [(r["sensor_id"], r["value"], r["classification"])
                for r in listed.json()["readings"]] == [
            (501, 23.0, "WARNING"), (502, 101.0, "ALERT"), (501, 20.0, "ML_PREDICTION"),
            (502, 45.0, "ML_PREDICTION"), (503, 1013.25, "ML_PREDICTION"),
        ]  # fmt: skip

        resilience = (await client.get("/resilience/health")).json()
        assert resilience["circuit_breakers"] == {
            "writer-postgres": "CLOSED",
            "writer-sqlserver": "CLOSED",
        }
