"""Fixtures of ml-batch tests: a database migrated by writer-postgres, points inserted as rows."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Iterable
from datetime import datetime

import asyncpg
import pytest

from writer_postgres.migrate import migrate

Row = tuple[str, str, str, datetime, float, str | None]  # domain, source, stream, time, value, type


@pytest.fixture
async def migrated_dsn(database_dsn: str) -> str:
    """This test's database with writer-postgres's migrations applied (the schema's one source)."""
    await migrate(database_dsn, months_back=0, months_ahead=1)
    return database_dsn


async def _insert_points(dsn: str, rows: Iterable[Row]) -> int:
    """Rows into data_points as writer-postgres stores them (class normal)."""
    records = [(t, d, s, st, v, "normal", typ) for d, s, st, t, v, typ in rows]
    conn = await asyncpg.connect(dsn)
    try:
        await conn.copy_records_to_table(
            "data_points", records=records,
            columns=["time", "domain", "source_id", "stream_id", "value", "cls", "stream_type"],
        )
    finally:
        await conn.close()
    return len(records)


@pytest.fixture
def insert_points() -> Callable[[str, Iterable[Row]], Awaitable[int]]:
    return _insert_points
