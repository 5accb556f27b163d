"""Live stream configuration through the fleet: change a config over HTTP (or with the CLI)
while points flow, and the next points are classified by the new version (rows in PostgreSQL)."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
import time
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from tests.e2e.fleet_process import FleetProcess

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

DOMAIN = "infrastructure"
GRACE_SECONDS = 1.0
"""How long after a PUT's 200 a config change may take to reach the classifier (a KV watch
push; measured in milliseconds here, bounded generously so a loaded CI machine does not flake)."""


def config_url(fleet: FleetProcess, source_id: str, stream_id: str) -> str:
    return f"{fleet.url('gateway-http')}/streams/{DOMAIN}/{source_id}/{stream_id}/config"


async def put_config(
    client: httpx.AsyncClient, fleet: FleetProcess, source_id: str, stream_id: str, body: Any
) -> dict[str, Any]:
    reply = await client.put(
        config_url(fleet, source_id, stream_id), json=body, headers={"X-API-Key": fleet.admin_key}
    )
    assert reply.status_code == 200, reply.text
    result: dict[str, Any] = reply.json()
    return result


async def post_points(
    client: httpx.AsyncClient, fleet: FleetProcess, source_id: str, points: list[dict[str, Any]]
) -> None:
    reply = await client.post(
        f"{fleet.url('gateway-http')}/ingest/data",
        json={"source_id": source_id, "domain": DOMAIN, "data_points": points},
        headers={"X-API-Key": fleet.admin_key},
    )
    assert reply.status_code == 202, reply.text


async def stored(dsn: str, source_id: str, want: int, timeout: float = 20.0) -> list[Any]:
    """Rows of ``source_id`` by time once there are ``want`` (fails after ``timeout``)."""
    deadline = time.monotonic() + timeout
    rows: list[Any] = []
    while time.monotonic() < deadline:
        try:
            conn = await asyncpg.connect(dsn)
            try:
                rows = await conn.fetch(
                    "SELECT time, value, cls, rule, config_version FROM data_points"
                    " WHERE domain = $1 AND source_id = $2 ORDER BY time",
                    DOMAIN,
                    source_id,
                )
            finally:
                await conn.close()
        except (OSError, asyncpg.InvalidCatalogNameError, asyncpg.UndefinedTableError):
            rows = []
        if len(rows) >= want:
            return rows
        await asyncio.sleep(0.1)
    pytest.fail(f"only {len(rows)} of {want} rows of {source_id} stored within {timeout}s")


async def test_a_config_put_while_points_flow_classifies_the_next_points_by_the_new_version(
    fleet: FleetProcess,
) -> None:
    source, stream = "live-config-src", "cpu_usage"
    tight = {"value_constraints": {"min_value": 0, "max_value": 100, "operational_max": 80}}
    loose = {"value_constraints": {"min_value": 0, "max_value": 100, "operational_max": 90}}
    start = datetime(2026, 3, 5, tzinfo=UTC)
    sent_at: dict[datetime, float] = {}  # event time → wall clock when its POST was acked

    async with httpx.AsyncClient(timeout=10) as client:
        v1 = (await put_config(client, fleet, source, stream, tight))["version"]
        await asyncio.sleep(GRACE_SECONDS)
        stop = asyncio.Event()

        async def flow() -> None:
            # One point of value 85 every 50 ms: warning under v1, normal under v2.
            i = 0
            while not stop.is_set() and i < 400:  # bounded: 20 s at most
                ts = start + timedelta(seconds=i)
                await post_points(
                    client,
                    fleet,
                    source,
                    [{"stream_id": stream, "value": 85.0, "timestamp": ts.isoformat()}],
                )
                sent_at[ts] = time.monotonic()
                i += 1
                await asyncio.sleep(0.05)

        flowing = asyncio.create_task(flow())
        try:
            await stored(fleet.postgres_dsn, source, want=10)  # points flow under v1
            v2 = (await put_config(client, fleet, source, stream, loose))["version"]
            changed_at = time.monotonic()
            await asyncio.sleep(GRACE_SECONDS + 1.0)  # and keep flowing under v2
        finally:
            stop.set()
            await flowing

    rows = await stored(fleet.postgres_dsn, source, want=len(sent_at))
    assert v2 > v1
    assert len(rows) == len(sent_at)
    # Each point is classified by one version, v1 points before v2 points, never mixed back.
    versions = [r["config_version"] for r in rows]
    assert set(versions) == {v1, v2}
    assert versions == sorted(versions)
    assert {(r["config_version"], r["cls"]) for r in rows} == {(v1, "warning"), (v2, "normal")}
    # Points acked after the PUT's reply (plus the grace) carry the new version.
    late = [r for r in rows if sent_at[r["time"]] > changed_at + GRACE_SECONDS]
    assert late and all(r["config_version"] == v2 and r["cls"] == "normal" for r in late)


async def test_a_domain_default_applies_until_an_exact_config_overrides_it_and_after_delete(
    fleet: FleetProcess,
) -> None:
    source, stream = "override-src", "mem_used"
    t0 = datetime(2026, 3, 6, tzinfo=UTC)
    async with httpx.AsyncClient(timeout=10) as client:
        default = await put_config(
            client, fleet, "*", stream, {"value_constraints": {"alert_max": 50}}
        )
        await asyncio.sleep(GRACE_SECONDS)
        await post_points(
            client, fleet, source, [{"stream_id": stream, "value": 60, "timestamp": t0.isoformat()}]
        )
        await stored(fleet.postgres_dsn, source, want=1)

        exact = await put_config(
            client, fleet, source, stream, {"value_constraints": {"alert_max": 70}}
        )
        await asyncio.sleep(GRACE_SECONDS)
        t1 = (t0 + timedelta(seconds=1)).isoformat()
        await post_points(
            client, fleet, source, [{"stream_id": stream, "value": 60, "timestamp": t1}]
        )
        await stored(fleet.postgres_dsn, source, want=2)

        deleted = await client.delete(
            config_url(fleet, source, stream), headers={"X-API-Key": fleet.admin_key}
        )
        assert deleted.status_code == 204
        await asyncio.sleep(GRACE_SECONDS)
        t2 = (t0 + timedelta(seconds=2)).isoformat()
        await post_points(
            client, fleet, source, [{"stream_id": stream, "value": 60, "timestamp": t2}]
        )

    rows = await stored(fleet.postgres_dsn, source, want=3)
    assert [(r["cls"], r["config_version"]) for r in rows] == [
        ("critical", default["version"]),
        ("normal", exact["version"]),
        ("critical", default["version"]),
    ]


async def test_a_config_set_with_the_cli_classifies_the_next_points(fleet: FleetProcess) -> None:
    source, stream = "cli-src", "disk_used"
    config = {"value_constraints": {"min_value": 0, "max_value": 100, "warning_max": 70}}
    result = await asyncio.to_thread(
        subprocess.run,
        [
            sys.executable,
            "-m",
            "tributary_operator.cli",
            "streams",
            "set",
            DOMAIN,
            source,
            stream,
            json.dumps(config),
        ],
        env=fleet.service_env(),
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert result.returncode == 0, result.stderr
    version = json.loads(result.stdout)["version"]
    await asyncio.sleep(GRACE_SECONDS)

    async with httpx.AsyncClient(timeout=10) as client:
        await post_points(
            client,
            fleet,
            source,
            [
                {"stream_id": stream, "value": 75, "timestamp": "2026-03-07T00:00:00Z"},
                {"stream_id": stream, "value": 10, "timestamp": "2026-03-07T00:00:01Z"},
            ],
        )
    rows = await stored(fleet.postgres_dsn, source, want=2)
    assert [(r["value"], r["cls"], r["config_version"]) for r in rows] == [
        (75.0, "warning", version),
        (10.0, "normal", version),
    ]


async def test_the_config_api_refuses_an_invalid_config_and_ingest_keys(
    fleet: FleetProcess,
) -> None:
    url = config_url(fleet, "*", "cpu_usage")
    async with httpx.AsyncClient(timeout=10) as client:
        invalid = await client.put(
            url,
            json={"value_constraints": {"max_value": 100, "warning_max": 150}},
            headers={"X-API-Key": fleet.admin_key},
        )
        anonymous = await client.get(url)
    assert invalid.status_code == 422
    assert invalid.json()["error"] == (
        "value_constraints: warning_max (150.0) lies above max_value (100.0)"
    )
    assert anonymous.status_code == 401
