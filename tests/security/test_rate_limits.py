"""Rate limits on the real gateways: 429 + Retry-After decided before anything is accepted
(nothing of a refused request reaches the bus), recovery after Retry-After, a separate backfill
budget, per client IP on HTTP, WebSocket and CSV upload."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest
import websockets

from tests.security.conftest import SCOPED_DOMAIN, SCOPED_SOURCE

pytestmark = pytest.mark.integration

SMALL = {
    "rate_limit_source_points_per_second": 5,
    "rate_limit_source_burst": 5,
    "rate_limit_backfill_points_per_second": 5,
    "rate_limit_backfill_burst": 5,
}


def live(n: int, start: int = 0) -> list[dict[str, Any]]:
    return [{"stream_id": f"s{start + i}", "value": 1.0} for i in range(n)]


def old(n: int) -> list[dict[str, Any]]:
    day_ago = (datetime.now(UTC) - timedelta(days=1)).isoformat()
    return [{"stream_id": f"b{i}", "value": 2.0, "timestamp": day_ago} for i in range(n)]


async def points_on_bus(fleet: Any) -> int:
    return sum(len(b.points) for b in await fleet.raw_batches())


async def test_over_the_source_budget_is_429_with_retry_after_then_recovers(
    start_fleet: Any,
) -> None:
    async with start_fleet(**SMALL) as fleet:
        admin = fleet.keys.admin
        assert (await fleet.ingest(admin, points=live(5))).status_code == 202

        refused = await fleet.ingest(admin, points=live(2, start=5))

        assert refused.status_code == 429
        retry_after = int(refused.headers["Retry-After"])
        assert retry_after >= 1 and refused.json()["retry_after"] == retry_after
        assert "nothing of this request was accepted" in refused.json()["error"]
        assert await points_on_bus(fleet) == 5  # the refused request published nothing

        await asyncio.sleep(retry_after)
        recovered = await fleet.ingest(admin, points=live(2, start=5))
        assert recovered.status_code == 202
        assert await points_on_bus(fleet) == 7


async def test_backfill_has_its_own_budget_so_a_buffer_flush_cannot_starve_live_data(
    start_fleet: Any,
) -> None:
    async with start_fleet(**SMALL) as fleet:
        admin = fleet.keys.admin
        assert (await fleet.ingest(admin, points=old(5))).status_code == 202
        assert (await fleet.ingest(admin, points=old(1))).status_code == 429  # backfill spent

        assert (await fleet.ingest(admin, points=live(5))).status_code == 202  # live untouched
        mixed = await fleet.ingest(admin, points=live(1, start=9) + old(1))
        assert mixed.status_code == 429
        assert await points_on_bus(fleet) == 10


async def test_more_points_than_a_burst_is_413_not_a_retry_loop(start_fleet: Any) -> None:
    async with start_fleet(**SMALL) as fleet:
        reply = await fleet.ingest(fleet.keys.admin, points=live(6))
        assert reply.status_code == 413 and "split the request" in reply.json()["error"]


async def test_each_client_ip_has_its_own_request_budget_checked_before_the_key(
    start_fleet: Any,
) -> None:
    async with start_fleet(rate_limit_ip_per_second=1, rate_limit_ip_burst=3) as fleet:
        async with fleet.http_from("10.0.0.1") as one, fleet.http_from("10.0.0.2") as two:
            statuses = [
                (await fleet.ingest("trb_bad", client=one)).status_code for _ in range(4)
            ]
            other = await fleet.ingest(fleet.keys.admin, client=two)
        assert statuses == [401, 401, 401, 429]
        assert other.status_code == 202


async def test_websocket_data_over_the_budget_is_rate_limited_without_ack(
    start_fleet: Any,
) -> None:
    async with start_fleet(**SMALL) as fleet, websockets.connect(fleet.ws_url) as ws:
        await ws.send(orjson.dumps({"type": "connect", "source_id": SCOPED_SOURCE,
                                    "domain": SCOPED_DOMAIN, "api_key": fleet.keys.admin}))
        assert orjson.loads(await ws.recv())["type"] == "connected"

        await ws.send(orjson.dumps({"type": "data", "batch": live(5)}))
        assert orjson.loads(await ws.recv())["type"] == "ack"
        await ws.send(orjson.dumps({"type": "data", "batch": live(1, start=5)}))
        refused = orjson.loads(await ws.recv())

        assert refused["type"] == "error" and refused["code"] == "rate_limited"
        assert refused["retry_after"] >= 1
        assert await points_on_bus(fleet) == 5
        await asyncio.sleep(refused["retry_after"])
        await ws.send(orjson.dumps({"type": "data", "batch": live(1, start=5)}))
        assert orjson.loads(await ws.recv())["type"] == "ack"  # the session went on
        assert await points_on_bus(fleet) == 6


async def test_csv_uploads_are_limited_per_client_ip(start_fleet: Any) -> None:
    async with start_fleet(rate_limit_ip_per_second=0.1, rate_limit_ip_burst=2) as fleet:
        statuses = [(await fleet.upload(fleet.keys.admin)).status_code for _ in range(3)]
        third = await fleet.upload(fleet.keys.admin)
    assert statuses == [202, 202, 429]
    assert int(third.headers["Retry-After"]) >= 1
