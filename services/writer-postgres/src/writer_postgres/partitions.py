"""Monthly partitions of ``data_points`` (native partitioning, when TimescaleDB is absent).

Partitions ``data_points_pYYYYMM`` cover [month start, next month start) in UTC. They are created
from a few months back to N months ahead; the DEFAULT partition takes any other time, so no
point is ever refused. A partition whose range already has rows in DEFAULT (a far-future point
arrived early) is built by moving those rows out of DEFAULT and then attaching it — creating it
directly would fail.
"""

from __future__ import annotations

from datetime import UTC, date, datetime

import asyncpg
import structlog

log = structlog.get_logger(__name__)

PARTITION_LOCK = 0x7472_6962_0002
"""Advisory lock key: one replica at a time maintains partitions; the others skip the round."""


def month_start(day: date, offset: int = 0) -> date:
    """First day of the month ``offset`` months from ``day``'s month."""
    year, month = divmod(day.year * 12 + day.month - 1 + offset, 12)
    return date(year, month + 1, 1)


def partition_name(month: date) -> str:
    return f"data_points_p{month:%Y%m}"


def wanted_months(today: date, months_back: int, months_ahead: int) -> list[date]:
    """Month starts that must have a partition: ``months_back`` before to ``months_ahead`` after."""
    return [month_start(today, k) for k in range(-months_back, months_ahead + 1)]


async def existing_partitions(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch(
        """
        SELECT c.relname FROM pg_inherits i JOIN pg_class c ON c.oid = i.inhrelid
        WHERE i.inhparent = 'data_points'::regclass
        """
    )
    return {r["relname"] for r in rows}


async def create_partition(conn: asyncpg.Connection, month: date) -> None:
    """Create and attach the partition of ``month``, moving its rows out of DEFAULT first."""
    name = partition_name(month)  # built from digits only: safe to interpolate
    low = datetime(month.year, month.month, 1, tzinfo=UTC)
    nxt = month_start(month, 1)
    high = datetime(nxt.year, nxt.month, 1, tzinfo=UTC)
    async with conn.transaction():
        await conn.execute(
            f"CREATE TABLE {name} (LIKE data_points INCLUDING DEFAULTS INCLUDING CONSTRAINTS)"
        )
        moved = await conn.execute(
            f"""
            WITH moved AS (
                DELETE FROM data_points_default WHERE time >= $1 AND time < $2 RETURNING *
            ) INSERT INTO {name} SELECT * FROM moved
            """,
            low, high,
        )
        await conn.execute(
            f"ALTER TABLE data_points ATTACH PARTITION {name} "
            f"FOR VALUES FROM ('{low.isoformat()}') TO ('{high.isoformat()}')"
        )
    log.info("partition created", partition=name, moved_from_default=int(moved.split()[-1]))


async def ensure_partitions(
    conn: asyncpg.Connection, months_back: int, months_ahead: int, today: date | None = None
) -> list[str]:
    """Create missing monthly partitions; their names (none if another replica holds the lock)."""
    if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", PARTITION_LOCK):
        return []
    try:
        have = await existing_partitions(conn)
        created = []
        for month in wanted_months(today or datetime.now(UTC).date(), months_back, months_ahead):
            if partition_name(month) not in have:
                await create_partition(conn, month)
                created.append(partition_name(month))
        return created
    finally:
        await conn.execute("SELECT pg_advisory_unlock($1)", PARTITION_LOCK)
