"""The service: the run loop in the background, /health, /ready and /metrics."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import httpx
import pytest

from ml_batch.app import create_app
from ml_batch.settings import MlBatchSettings

pytestmark = pytest.mark.integration


async def test_service_runs_periodically_and_reports_ready_and_metrics(
    migrated_dsn: str, servers: Any, bus_prefix: str, jetstream: Any, insert_points: Any
) -> None:
    now = datetime.now(UTC)
    await insert_points(
        migrated_dsn,
        [("finance", "x", "p", now - timedelta(seconds=i), 100.0 + i % 2, None)
         for i in range(12)],
    )
    settings = MlBatchSettings(
        postgres_dsn=migrated_dsn, nats_url=servers.nats_url, bus_prefix=bus_prefix,
        ml_interval_seconds=0.5,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://t")
        conn = await asyncpg.connect(migrated_dsn)
        try:
            rows = 0
            for _ in range(60):  # bounded: 30 s at most
                rows = await conn.fetchval("SELECT count(*) FROM predictions")
                if rows:
                    break
                await asyncio.sleep(0.5)
            assert rows == 1
            await insert_points(migrated_dsn, [("finance", "x", "p", now + timedelta(seconds=1),
                                                100.5, None)])
            for _ in range(60):
                rows = await conn.fetchval("SELECT count(*) FROM predictions")
                if rows == 2:
                    break
                await asyncio.sleep(0.5)
            assert rows == 2  # the next run picked up the new point
        finally:
            await conn.close()
        assert (await client.get("/health")).json() == {"status": "ok"}
        ready = await client.get("/ready")
        assert ready.status_code == 200
        assert ready.json() == {"ready": True, "checks": {"nats": True, "postgres": True}}
        metrics = (await client.get("/metrics")).text
        assert 'ml_batch_runs_total{outcome="ok"}' in metrics
        await client.aclose()
