"""Predictions of a domain routed to SQL Server land in the legacy ``dbo.predictions`` (on SQL
Server when ``MSSQL_DSN`` is set, else on the PostgreSQL stand-in), once per (sensor, model,
as_of), and explanations that arrive later are added as ``ai_explainer_runner`` did."""

from __future__ import annotations

import asyncio
import json
import os
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from ml_batch.app import once
from ml_batch.job import MlJob
from ml_batch.settings import MlBatchSettings
from tributary_sqlserver import build_engine
from tributary_sqlserver.predictions import metadata

pytestmark = pytest.mark.integration

NOW = datetime.now(UTC).replace(microsecond=0)
STEP = timedelta(minutes=1)
DEVICE = "0f6c1b2e-7a51-4c1c-9b1a-3e0b0e7f1a11"


def _series(stream: str, values: list[float]) -> list[Any]:
    start = NOW - STEP * (len(values) - 1)
    return [("iot", DEVICE, stream, start + STEP * i, v, None) for i, v in enumerate(values)]


def _legacy_rows(dsn: str) -> list[Any]:
    from sqlalchemy import text

    engine = build_engine(dsn)
    try:
        with engine.connect() as conn:
            return list(
                conn.execute(
                    text(
                        "SELECT sensor_id, model_id, is_anomaly, as_of, explanation"
                        " FROM dbo.predictions"
                        " ORDER BY sensor_id"
                    )
                ).all()
            )
    finally:
        engine.dispose()


def _prepare(dsn: str) -> None:
    from sqlalchemy import text

    engine = build_engine(dsn)
    try:
        with engine.begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(text("CREATE SCHEMA IF NOT EXISTS dbo"))
            metadata.create_all(conn, checkfirst=True)
            conn.execute(text("DELETE FROM dbo.predictions WHERE sensor_id IN (17, 18)"))
    finally:
        engine.dispose()


async def test_iot_predictions_land_in_the_legacy_table_once_with_their_explanations(
    migrated_dsn: str, servers: Any, bus_prefix: str, jetstream: Any, insert_points: Any
) -> None:
    await insert_points(
        migrated_dsn,
        _series("17", [20.0 + 0.2 * i for i in range(30)])
        + _series("18", [50.0 + (0.3 if i % 2 else -0.3) for i in range(29)] + [90.0]),
    )
    common = {"nats_url": servers.nats_url, "bus_prefix": bus_prefix, "ml_window_points": 50}
    # ml-batch reads the points (here from PostgreSQL: the T-SQL reader needs a real SQL Server)
    first = await once(MlBatchSettings(postgres_dsn=migrated_dsn, **common))
    assert first.predictions == 2
    legacy_dsn = os.environ.get("MSSQL_DSN") or migrated_dsn
    await asyncio.to_thread(_prepare, legacy_dsn)
    settings = MlBatchSettings(
        postgres_dsn=migrated_dsn,
        sink_routes="iot=sqlserver,*=postgres",
        mssql_dsn=legacy_dsn,
        **common,
    )
    pool = await asyncpg.create_pool(migrated_dsn, min_size=1, max_size=2)
    try:
        job = MlJob(settings, pool, jetstream)
        await job.copy_to_sqlserver(["iot"], NOW - timedelta(hours=1))
        rows = await asyncio.to_thread(_legacy_rows, legacy_dsn)
        assert [(r[0], r[2]) for r in rows] == [(17, False), (18, True)]
        assert rows[0][4] is None
        assert json.loads(rows[1][4])["source"] == "builtin"  # the anomaly's explanation

        # the AI explainer answers later: its explanation reaches the legacy row once
        async with pool.acquire() as conn:
            await conn.execute(
                "UPDATE predictions SET explanation = $1 WHERE stream_id = '17'",
                json.dumps({"source": "ai-explainer", "text": "steady rise"}),
            )
        await job.copy_to_sqlserver(["iot"], NOW - timedelta(hours=1))
        again = await asyncio.to_thread(_legacy_rows, legacy_dsn)
        assert len(again) == 2  # nothing inserted twice
        assert json.loads(again[0][4]) == {"source": "ai-explainer", "text": "steady rise"}
        assert again[1][4] == rows[1][4]  # an explained row is never overwritten
    finally:
        await pool.close()
        if job._engine is not None:
            job._engine.dispose()
