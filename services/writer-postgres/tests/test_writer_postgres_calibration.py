"""Units and calibration at read time (migration 0009, queries/mixed_formats.sql) against the
real PostgreSQL: stored values stay raw, the view converts by the most specific calibration in
force, and seed 003's example queries answer on a mixed ticks/mm rollout."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

import asyncpg
import pytest

from writer_postgres.readside import named_queries

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
QUERIES = named_queries("mixed_formats")


async def insert_points(conn: asyncpg.Connection, rows: list[tuple[str, int, float, dict]]) -> None:
    await conn.executemany(
        "INSERT INTO data_points (time, domain, source_id, stream_id, value, cls, metadata)"
        " VALUES ($1, 'machines', $2, 'platform_extension', $3, 'normal', $4::jsonb)",
        [(T0 + timedelta(seconds=s), src, v, json.dumps(meta)) for src, s, v, meta in rows],
    )


@pytest.fixture
async def conn(migrated_dsn: str) -> asyncpg.Connection:
    connection = await asyncpg.connect(migrated_dsn)
    await connection.execute(
        "INSERT INTO stream_units (domain, stream_id, unit) VALUES"
        " ('machines', 'platform_extension', 'ticks');"
        "INSERT INTO calibrations (domain, stream_id, from_unit, to_unit, scale, note) VALUES"
        " ('machines', 'platform_extension', 'ticks', 'mm', 0.05, 'seed 003: ticks / 20')"
    )
    yield connection
    await connection.close()


async def unified(conn: asyncpg.Connection, source: str) -> list[tuple[object, ...]]:
    rows = await conn.fetch(
        "SELECT value_raw, unit_raw, value, unit FROM data_points_unified"
        " WHERE source_id = $1 ORDER BY time",
        source,
    )
    return [tuple(r) for r in rows]


async def test_ticks_are_divided_by_20_and_mm_pass_through(conn: asyncpg.Connection) -> None:
    await insert_points(conn, [("dev-1", 0, 200, {}), ("dev-1", 1, 12.5, {"unit": "mm"})])

    assert await unified(conn, "dev-1") == [(200.0, "ticks", 10.0, "mm"), (12.5, "mm", 12.5, "mm")]
    raw = await conn.fetch("SELECT value FROM data_points WHERE source_id = 'dev-1' ORDER BY time")
    assert [r["value"] for r in raw] == [200.0, 12.5]  # never rewritten


async def test_a_device_calibration_wins_inside_its_interval_only(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO calibrations (domain, source_id, stream_id, from_unit, to_unit, scale,"
        " \"offset\", valid_from, valid_to) VALUES ('machines', 'dev-2', 'platform_extension',"
        " 'ticks', 'mm', 0.04, 1.5, $1, $2)",
        T0 + timedelta(seconds=1),
        T0 + timedelta(seconds=2),
    )
    await insert_points(conn, [("dev-2", 0, 100, {}), ("dev-2", 1, 100, {}), ("dev-2", 2, 100, {})])

    assert await unified(conn, "dev-2") == [
        (100.0, "ticks", 5.0, "mm"),
        (100.0, "ticks", 5.5, "mm"),
        (100.0, "ticks", 5.0, "mm"),
    ]


async def test_a_source_declares_its_new_unit_from_its_upgrade_on(conn: asyncpg.Connection) -> None:
    await conn.execute(
        "INSERT INTO stream_units (domain, source_id, stream_id, unit, valid_from)"
        " VALUES ('machines', 'dev-3', 'platform_extension', 'mm', $1)",
        T0 + timedelta(seconds=1),
    )
    await insert_points(conn, [("dev-3", 0, 60, {}), ("dev-3", 1, 3.5, {})])

    assert await unified(conn, "dev-3") == [(60.0, "ticks", 3.0, "mm"), (3.5, "mm", 3.5, "mm")]


async def test_a_unit_without_calibration_stays_raw(conn: asyncpg.Connection) -> None:
    await insert_points(conn, [("dev-4", 0, 7, {"unit": "inch"})])
    assert await unified(conn, "dev-4") == [(7.0, "inch", 7.0, "inch")]


async def test_the_seed_example_queries_on_a_mixed_rollout(conn: asyncpg.Connection) -> None:
    await insert_points(
        conn,
        [
            ("old", 0, -40, {}),
            ("old", 1, 60, {}),  # ticks: left → right
            ("mixed", 2, 100, {}),
            ("mixed", 3, -2.5, {"unit": "mm"}),  # upgraded mid-way
            ("new", 4, 1.0, {"unit": "mm"}),
        ],
    )
    args = ("machines", "platform_extension", T0 - timedelta(days=1))

    counts = await conn.fetch(QUERIES["legacy_vs_new_counts"], *args)
    assert [(r["unit_raw"], r["points"], r["sources"]) for r in counts] == [
        ("mm", 2, 2),
        ("ticks", 3, 2),
    ]
    both = await conn.fetch(QUERIES["sources_with_both_formats"], *args)
    assert [(r["source_id"], r["units"]) for r in both] == [("mixed", ["mm", "ticks"])]
    recent = await conn.fetch(QUERIES["unified_recent_rows"], *args)
    assert [(r["source_id"], r["value_raw"], r["value"], r["unit"]) for r in recent] == [
        ("new", 1.0, 1.0, "mm"),
        ("mixed", -2.5, -2.5, "mm"),
        ("mixed", 100.0, 5.0, "mm"),
        ("old", 60.0, 3.0, "mm"),
        ("old", -40.0, -2.0, "mm"),
    ]
    switches = await conn.fetch(QUERIES["left_right_switches"], *args)
    assert [(r["source_id"], r["switches"], r["to_right"], r["to_left"]) for r in switches] == [
        ("mixed", 1, 0, 1),
        ("old", 1, 1, 0),
    ]
