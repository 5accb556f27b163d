"""Alert lifecycle through the fleet: a series crosses into the warning zone for N points → one
opened row in stream_alerts; it recovers → closed; a new violation series within the cooldown
opens nothing, and the first violation after the cooldown opens the next alert.

Written against the AlertEvent contract (libs/contracts): the classifier emits opened /
escalated / closed on dp.alert.<domain>.<severity>.<source>, writer-postgres keeps one row per
alert_id. Cooldown and consecutive counts run on event time, so the points carry timestamps.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from tests.e2e.fleet_process import FleetProcess

pytestmark = [
    pytest.mark.e2e,
    pytest.mark.integration,
]

DOMAIN, SOURCE, STREAM = "infrastructure", "alert-src", "cpu_usage"
T0 = datetime(2026, 3, 10, tzinfo=UTC)
COOLDOWN = 300
CONFIG = {
    "stream_type": "cpu_usage",
    "value_constraints": {"min_value": 0, "max_value": 100, "warning_max": 80},
    "consecutive_violations_required": 3,
    "cooldown_seconds": COOLDOWN,
}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


async def post(client: httpx.AsyncClient, fleet: FleetProcess, series: dict[float, float]) -> None:
    points = [
        {"stream_id": STREAM, "value": value, "timestamp": at(second).isoformat()}
        for second, value in series.items()
    ]
    reply = await client.post(
        f"{fleet.url('gateway-http')}/ingest/data",
        json={"source_id": SOURCE, "domain": DOMAIN, "data_points": points},
        headers={"X-API-Key": fleet.admin_key},
    )
    assert reply.status_code == 202, reply.text


async def query(dsn: str, sql: str) -> list[Any]:
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.InvalidCatalogNameError):
        return []
    try:
        return list(await conn.fetch(sql, DOMAIN, SOURCE, STREAM))
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()


async def alerts(dsn: str) -> list[Any]:
    return await query(
        dsn,
        "SELECT * FROM stream_alerts WHERE domain = $1 AND source_id = $2 AND stream_id = $3"
        " ORDER BY opened_at",
    )


async def open_now(dsn: str) -> list[Any]:
    """The README's "which alerts are open now" query, for this stream."""
    return await query(
        dsn,
        "SELECT alert_id FROM stream_alerts WHERE status = 'open'"
        " AND domain = $1 AND source_id = $2 AND stream_id = $3",
    )


async def points_stored(dsn: str) -> int:
    rows = await query(
        dsn,
        "SELECT count(*) FROM data_points WHERE domain = $1 AND source_id = $2 AND stream_id = $3",
    )
    return int(rows[0][0]) if rows else 0


async def until(check: Callable[[], Any], what: str, timeout: float = 20.0) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.1)
    pytest.fail(f"timed out after {timeout}s waiting for {what}")


async def test_warning_series_opens_one_alert_recovery_closes_it_and_cooldown_holds(
    fleet: FleetProcess,
) -> None:
    dsn = fleet.postgres_dsn
    async with httpx.AsyncClient(timeout=10) as client:
        reply = await client.put(
            f"{fleet.url('gateway-http')}/streams/{DOMAIN}/{SOURCE}/{STREAM}/config",
            json=CONFIG,
            headers={"X-API-Key": fleet.admin_key},
        )
        assert reply.status_code == 200, reply.text
        version = reply.json()["version"]
        await asyncio.sleep(1.0)  # the classifier applies config changes from its KV watch

        # Two violating points: below the required three, nothing opens.
        await post(client, fleet, {0: 50.0, 1: 85.0, 2: 86.0})
        await until(lambda: _at_least(points_stored(dsn), 3), "3 stored points")
        # The third violating point in a row opens exactly one alert.
        await post(client, fleet, {3: 87.0})
        [opened] = await until(lambda: alerts(dsn), "the opened alert row")
        assert (opened["status"], opened["severity"], opened["rule"] is not None) == (
            "open",
            "warning",
            True,
        )
        assert (opened["first_value"], opened["first_at"]) == (85.0, at(1))
        assert (opened["last_value"], opened["last_at"]) == (87.0, at(3))
        assert (opened["peak_value"], opened["violation_count"]) == (87.0, 3)
        assert opened["config_version"] == version
        assert [r["alert_id"] for r in await open_now(dsn)] == [opened["alert_id"]]

        # A normal point: the alert closes.
        await post(client, fleet, {4: 40.0})

        async def closed() -> Any:
            rows = await alerts(dsn)
            return rows if rows and rows[0]["status"] == "closed" else None

        [row] = await until(closed, "the alert row to close")
        assert row["alert_id"] == opened["alert_id"]
        assert row["closed_at"] == at(4)
        assert await open_now(dsn) == []

        # Violations again, inside the cooldown (event time 5..8 s after a close at 4 s): no
        # alert. Then one violation after the cooldown: the next alert opens — which also proves
        # that every event of the series before it has been handled.
        await post(client, fleet, {5: 90.0, 6: 91.0, 7: 92.0, 8: 93.0})
        await post(client, fleet, {4 + COOLDOWN + 1: 94.0})

        async def two() -> Any:
            rows = await alerts(dsn)
            return rows if len(rows) >= 2 else None

        rows = await until(two, "the alert after the cooldown")

    assert len(rows) == 2
    first, second = rows
    assert (first["alert_id"], first["status"]) == (opened["alert_id"], "closed")
    assert second["status"] == "open"
    assert second["opened_at"] >= at(4 + COOLDOWN)
    assert [r["alert_id"] for r in await open_now(dsn)] == [second["alert_id"]]


async def _at_least(count: Any, want: int) -> bool:
    return bool(await count >= want)
