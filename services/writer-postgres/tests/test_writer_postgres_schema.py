"""Migrations and partitions against the real local PostgreSQL."""

from __future__ import annotations

import asyncio
from datetime import UTC, date, datetime

import asyncpg
import pytest

from writer_postgres.migrate import load_migrations, migrate, storage_mode
from writer_postgres.partitions import ensure_partitions, partition_name, wanted_months

pytestmark = pytest.mark.integration


async def _fetch(dsn: str, query: str) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query)
    finally:
        await conn.close()


async def _timescale_available(dsn: str) -> bool:
    rows = await _fetch(dsn, "SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb'")
    return bool(rows)


async def test_migrate_creates_the_database_and_is_idempotent(database_dsn: str) -> None:
    versions = [m.version for m in load_migrations()]
    assert await migrate(database_dsn) == versions
    assert await migrate(database_dsn) == []
    recorded = await _fetch(database_dsn, "SELECT version, name FROM schema_migrations ORDER BY 1")
    assert [(r["version"], r["name"]) for r in recorded] == [
        (m.version, m.name) for m in load_migrations()
    ]
    tables = await _fetch(
        database_dsn,
        "SELECT tablename FROM pg_tables WHERE schemaname = 'public' AND tablename = ANY("
        "ARRAY['data_points', 'stream_alerts', 'ingest_rejects', 'predictions',"
        " 'ingestion_audit_log', 'schema_migrations']) ORDER BY 1",
    )
    assert [r["tablename"] for r in tables] == [
        "data_points", "ingest_rejects", "ingestion_audit_log", "predictions",
        "schema_migrations", "stream_alerts",
    ]


async def test_replicas_starting_at_once_migrate_exactly_once(database_dsn: str) -> None:
    results = await asyncio.gather(*(migrate(database_dsn) for _ in range(4)))
    assert sorted(len(r) for r in results) == [0, 0, 0, len(load_migrations())]


async def test_data_points_has_the_contract_columns_and_unique_key(migrated_dsn: str) -> None:
    columns = await _fetch(
        migrated_dsn,
        "SELECT column_name, data_type FROM information_schema.columns"
        " WHERE table_name = 'data_points' ORDER BY ordinal_position",
    )
    assert {r["column_name"]: r["data_type"] for r in columns} == {
        "time": "timestamp with time zone", "domain": "text", "source_id": "text",
        "stream_id": "text", "value": "double precision", "cls": "text", "reason": "text",
        "stream_type": "text", "sequence": "bigint", "metadata": "jsonb", "transport": "text",
        "received_at": "timestamp with time zone", "rule": "text", "config_version": "bigint",
        "legacy": "jsonb",
    }
    key = await _fetch(
        migrated_dsn,
        "SELECT pg_get_constraintdef(oid) AS def FROM pg_constraint"
        " WHERE conrelid = 'data_points'::regclass AND contype = 'u'",
    )
    assert [r["def"] for r in key] == ["UNIQUE (domain, source_id, stream_id, \"time\")"]


async def test_native_partitions_cover_months_back_and_ahead_plus_default(
    migrated_dsn: str,
) -> None:
    conn = await asyncpg.connect(migrated_dsn)
    try:
        if await storage_mode(conn) != "partitioned":
            pytest.skip("data_points is a TimescaleDB hypertable on this server")
        children = await conn.fetch(
            "SELECT c.relname, pg_get_expr(c.relpartbound, c.oid) AS bound FROM pg_inherits i"
            " JOIN pg_class c ON c.oid = i.inhrelid"
            " WHERE i.inhparent = 'data_points'::regclass ORDER BY 1"
        )
    finally:
        await conn.close()
    months = wanted_months(datetime.now(UTC).date(), 3, 3)
    assert [r["relname"] for r in children] == sorted(
        [partition_name(m) for m in months] + ["data_points_default"]
    )
    bounds = {r["relname"]: r["bound"] for r in children}
    assert bounds["data_points_default"] == "DEFAULT"
    first = months[0]
    assert bounds[partition_name(first)].startswith(
        f"FOR VALUES FROM ('{first:%Y-%m}-01 00:00:00+00')"
    )


async def test_new_partition_takes_over_its_rows_from_default(migrated_dsn: str) -> None:
    conn = await asyncpg.connect(migrated_dsn)
    try:
        if await storage_mode(conn) != "partitioned":
            pytest.skip("data_points is a TimescaleDB hypertable on this server")
        far = datetime(2031, 5, 17, 12, 0, tzinfo=UTC)
        await conn.execute(
            "INSERT INTO data_points (time, domain, source_id, stream_id, value, cls)"
            " VALUES ($1, 'iot', 'd1', 's1', 1.5, 'normal')", far,
        )
        where = await conn.fetchval(
            "SELECT tableoid::regclass::text FROM data_points WHERE time = $1", far
        )
        assert where == "data_points_default"
        created = await ensure_partitions(conn, 0, 1, today=date(2031, 4, 2))
        assert created == ["data_points_p203104", "data_points_p203105"]
        where = await conn.fetchval(
            "SELECT tableoid::regclass::text FROM data_points WHERE time = $1", far
        )
        assert where == "data_points_p203105"
        assert await conn.fetchval("SELECT count(*) FROM data_points") == 1
        assert await ensure_partitions(conn, 0, 1, today=date(2031, 4, 2)) == []
    finally:
        await conn.close()


async def test_timescale_hypertable_when_the_extension_exists(migrated_dsn: str) -> None:
    if not await _timescale_available(migrated_dsn):
        pytest.skip("TimescaleDB is not installed on this PostgreSQL (pg_available_extensions)")
    conn = await asyncpg.connect(migrated_dsn)
    try:
        assert await storage_mode(conn) == "timescale"
        assert await conn.fetchval(
            "SELECT count(*) FROM timescaledb_information.hypertables"
            " WHERE hypertable_name = 'data_points'"
        ) == 1
    finally:
        await conn.close()
