"""Fixtures of writer-sqlserver tests: readings/batch builders and the PostgreSQL stand-in.

The stand-in is a per-test PostgreSQL database (root ``database_dsn`` fixture) holding the same
schema metadata in schema ``dbo``; the writer reaches it through the same engine factory and
statements as SQL Server (only the dialect differs).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine

from tributary_contracts import ClassifiedBatch, ClassifiedPoint, LegacyIds, PointClass, Transport
from writer_sqlserver.database import build_engine, create_schema
from writer_sqlserver.settings import WriterSqlServerSettings

T0 = datetime(2026, 2, 25, 21, 0, 0, 123456, tzinfo=UTC)
T0_NAIVE = T0.replace(tzinfo=None)


def at(seconds: float) -> datetime:
    """Naive UTC time ``seconds`` after T0 (what the legacy tables hold)."""
    return T0_NAIVE + timedelta(seconds=seconds)


def build_batch(
    values: list[tuple[int, float, float]],
    *,
    cls: PointClass = PointClass.NORMAL,
    source_id: str = "dev-0001",
    domain: str = "iot",
    legacy: bool = True,
) -> ClassifiedBatch:
    """A classified IoT batch of ``(sensor_id, seconds after T0, value)`` points."""
    points = [
        ClassifiedPoint(
            stream_id=str(sensor_id),
            value=value,
            ts=T0 + timedelta(seconds=seconds),
            stream_type="temperature",
            reason=f"value {value} ({cls.value})",
            rule="none" if cls is PointClass.NORMAL else "max_value",
            legacy=LegacyIds(sensor_id=sensor_id) if legacy else None,
        )
        for sensor_id, seconds, value in values
    ]
    return ClassifiedBatch(
        domain=domain, source_id=source_id, transport=Transport.HTTP,
        received_at=T0 + timedelta(minutes=5), cls=cls,
        classified_at=T0 + timedelta(minutes=6), points=points,
    )


def settings_for(dsn: str, **overrides: Any) -> WriterSqlServerSettings:
    return WriterSqlServerSettings(mssql_dsn=dsn, **overrides)  # type: ignore[arg-type]


async def create_database(dsn: str) -> None:
    """Create the (not yet existing) database of the root ``database_dsn`` fixture."""
    base, _, name = dsn.rpartition("/")
    conn = await asyncpg.connect(f"{base}/postgres")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@pytest.fixture
async def standin_dsn(database_dsn: str) -> AsyncIterator[str]:
    """A fresh PostgreSQL database with the legacy schema in ``dbo``."""
    await create_database(database_dsn)
    engine = build_engine(settings_for(database_dsn))
    create_schema(engine)
    engine.dispose()
    yield database_dsn


@pytest.fixture
def standin_engine(standin_dsn: str) -> Iterator[Engine]:
    engine = build_engine(settings_for(standin_dsn))
    yield engine
    engine.dispose()


def rows(engine: Engine, table: Any, *columns: str) -> list[tuple[Any, ...]]:
    """``columns`` of every row of ``table``, sorted."""
    with engine.connect() as conn:
        result = conn.execute(select(*(table.c[c] for c in columns)))
        return sorted(tuple(r) for r in result)
