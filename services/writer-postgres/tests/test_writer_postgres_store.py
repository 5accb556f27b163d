"""PointStore against the real local PostgreSQL: exact rows, idempotency, refused values."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta
from typing import Any

import asyncpg
import pytest

from writer_postgres.errors import Failure, classify_error
from writer_postgres.store import PointStore, batch_rows, keep_session, prepare_connection

pytestmark = pytest.mark.integration


@pytest.fixture
async def store(migrated_dsn: str) -> AsyncIterator[PointStore]:
    pool = await asyncpg.create_pool(  # as the service has it; one connection, so it is reused
        migrated_dsn, min_size=1, max_size=1, init=prepare_connection, reset=keep_session
    )
    yield PointStore(pool)
    await pool.close()


async def test_written_rows_read_back_exactly(
    store: PointStore, migrated_dsn: str, make_batch: Any, expect: Any, read_rows: Any
) -> None:
    first = make_batch(3)
    second = make_batch(2, source_id="server 02/α", stream_id="BTCUSDT:price", metadata={})
    assert await store.write_batches([first, second]) == 5
    assert await read_rows(migrated_dsn) == expect(first, second)


async def test_a_duplicate_batch_adds_no_rows(
    store: PointStore, migrated_dsn: str, make_batch: Any, expect: Any, read_rows: Any
) -> None:
    batch = make_batch(4)
    assert await store.write_batches([batch]) == 4
    assert await store.write_batches([batch]) == 0
    overlapping = make_batch(3, start=batch.points[2].ts)  # 2 already stored, 1 new
    assert await store.write_batches([overlapping, overlapping]) == 1
    assert len(await read_rows(migrated_dsn)) == 5


async def test_staging_is_empty_after_each_commit(store: PointStore, make_batch: Any) -> None:
    first = make_batch(2)
    assert await store.write_batches([first]) == 2  # straight COPY
    assert await store.write_batches([first, make_batch(3)]) == 1  # conflict: via staging
    later = make_batch(2, start=first.points[0].ts + timedelta(hours=1))
    # via staging again (a point twice in one fetch): the first staging's rows are gone
    assert await store.write_batches([later, later]) == 2


@pytest.mark.parametrize(
    ("field", "value", "sqlstate"),
    [
        ("metadata", {"note": "a\u0000b"}, "22P05"),  # jsonb refuses \u0000
        ("reason", "NUL \x00 in text", "22021"),  # text refuses a NUL byte
    ],
)
async def test_values_postgres_refuses_are_permanent_errors(
    store: PointStore, make_batch: Any, field: str, value: Any, sqlstate: str
) -> None:
    batch = make_batch(2)
    setattr(batch.points[1], field, value)
    rows, _, _ = batch_rows(batch)
    with pytest.raises(asyncpg.PostgresError) as refused:
        await store.write_rows(rows)
    assert refused.value.sqlstate == sqlstate
    assert classify_error(refused.value) is Failure.PERMANENT
    assert await store.write_rows(rows[:1]) == 1  # the pool connection is still usable
