"""Fixtures of writer-postgres tests: batch builders and an inline running writer."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest
from starlette.applications import Starlette

from tributary_contracts import ClassifiedBatch, ClassifiedPoint, PointClass, Transport

T0 = datetime(2026, 2, 25, 21, 0, 0, 123456, tzinfo=UTC)

BatchFactory = Callable[..., ClassifiedBatch]


def build_batch(
    n: int = 3,
    *,
    domain: str = "infrastructure",
    source_id: str = "server-01",
    cls: PointClass = PointClass.WARNING,
    start: datetime = T0,
    stream_id: str = "cpu_usage",
    metadata: dict[str, Any] | None = None,
) -> ClassifiedBatch:
    """``n`` points one second apart, every optional field filled in."""
    points = [
        ClassifiedPoint(
            stream_id=stream_id,
            value=40.5 + i,
            ts=start + timedelta(seconds=i),
            stream_type="cpu_usage",
            sequence=i,
            metadata=metadata if metadata is not None else {"core": i, "tags": ["a", "b"]},
            reason=f"value {40.5 + i} above operational_max 40",
            rule="operational_max",
            config_version=7,
        )
        for i in range(n)
    ]
    return ClassifiedBatch(
        domain=domain,
        source_id=source_id,
        transport=Transport.HTTP,
        received_at=start + timedelta(minutes=1),
        cls=cls,
        classified_at=start + timedelta(minutes=2),
        points=points,
    )


def _key(row: dict[str, Any]) -> tuple[Any, ...]:
    return (row["domain"], row["source_id"], row["stream_id"], row["time"])


def expected_rows(*batches: ClassifiedBatch) -> list[dict[str, Any]]:
    """What ``data_points`` must hold for ``batches``, in the shape ``stored_rows`` returns."""
    rows = [
        {
            "time": p.ts, "domain": batch.domain, "source_id": batch.source_id,
            "stream_id": p.stream_id, "value": p.value, "cls": batch.cls.value,
            "reason": p.reason, "stream_type": p.stream_type, "sequence": p.sequence,
            "metadata": p.metadata, "transport": batch.transport.value,
            "received_at": batch.received_at, "rule": p.rule,
            "config_version": p.config_version,
        }
        for batch in batches
        for p in batch.points
    ]
    return sorted(rows, key=_key)


async def stored_rows(dsn: str, where: str = "true") -> list[dict[str, Any]]:
    """Rows of ``data_points`` (metadata decoded), sorted by key (in Python: no collation)."""
    conn = await asyncpg.connect(dsn)
    try:
        records = await conn.fetch(
            "SELECT time, domain, source_id, stream_id, value, cls, reason, stream_type, sequence,"
            " metadata, transport, received_at, rule, config_version FROM data_points"
            f" WHERE {where}"
        )
    finally:
        await conn.close()
    return sorted(
        ({**dict(r), "metadata": json.loads(r["metadata"])} for r in records), key=_key
    )


@pytest.fixture
def make_batch() -> BatchFactory:
    return build_batch


@pytest.fixture
async def migrated_dsn(database_dsn: str) -> AsyncIterator[str]:
    """The test database, created and migrated."""
    from writer_postgres.migrate import migrate

    await migrate(database_dsn)
    yield database_dsn


@pytest.fixture
def expect() -> Callable[..., list[dict[str, Any]]]:
    return expected_rows


@pytest.fixture
def read_rows() -> Callable[..., Any]:
    return stored_rows


RunWriter = Callable[..., AbstractAsyncContextManager[Starlette]]


@pytest.fixture
def run_writer(servers: Any, bus_prefix: str, database_dsn: str, jetstream: Any) -> RunWriter:
    """``async with run_writer(**settings):`` the writer started inline (create_app + lifespan)
    on this test's bus prefix and database."""
    from writer_postgres.app import create_app
    from writer_postgres.settings import WriterPostgresSettings

    @asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[Starlette]:
        settings = WriterPostgresSettings(
            nats_url=servers.nats_url, bus_prefix=bus_prefix, postgres_dsn=database_dsn,
            fetch_timeout_seconds=0.05, nak_backoff_seconds=0.1, nak_backoff_max_seconds=0.5,
            **overrides,
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            yield app

    return run
