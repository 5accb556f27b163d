"""The raw ledger (raw_record, ingest_error, ingest_parse) against the real PostgreSQL."""

from __future__ import annotations

import base64
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tributary_contracts import PointRef, RawRecord, RejectedEntry, Transport
from writer_postgres.ledger import LedgerStore

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)
BODY = (
    b'{"source_id":"dev-1","domain":"machines","data_points":[{"stream_id":"x","value":1},'
    b'{"stream_id":"y","value":"NaN"}]}'
)


def record(record_id: str = "r1", at: datetime = T0, **extra: Any) -> RawRecord:
    return RawRecord(
        record_id=record_id,
        transport=Transport.HTTP,
        domain="machines",
        source_id="dev-1",
        received_at=at,
        content_type="application/json",
        payload_b64=base64.b64encode(BODY).decode(),
        payload_bytes=len(BODY),
        status=202,
        accepted=[PointRef(stream_id="x", ts=at)],
        rejected=[
            RejectedEntry(
                index=1,
                stream_id="y",
                reason="value: must be finite",
                excerpt='{"stream_id":"y","value":"NaN"}',
            )
        ],
        **extra,
    )


@pytest.fixture
async def store(migrated_dsn: str) -> Any:
    pool = await asyncpg.create_pool(migrated_dsn, min_size=1, max_size=2)
    yield LedgerStore(pool)
    await pool.close()


async def test_a_record_keeps_the_bytes_and_links_points_and_errors(
    store: LedgerStore, migrated_dsn: str
) -> None:
    assert await store.insert([record(), record("r2", error="body: domain is missing")]) == 2
    assert await store.insert([record()]) == 0  # a redelivery
    conn = await asyncpg.connect(migrated_dsn)
    try:
        await conn.execute(
            "INSERT INTO data_points (time, domain, source_id, stream_id, value, cls)"
            " VALUES ($1, 'machines', 'dev-1', 'x', 1, 'normal')",
            T0,
        )
        rows = await conn.fetch(
            "SELECT record_id, payload_text, points_published, points_stored, errors,"
            " error_reasons FROM ingest_parse ORDER BY record_id"
        )
        payload = await conn.fetchval("SELECT payload FROM raw_record WHERE record_id = 'r1'")
    finally:
        await conn.close()
    assert payload == BODY
    assert [tuple(r) for r in rows] == [
        ("r1", BODY.decode(), 1, 1, 1, "value: must be finite"),
        ("r2", BODY.decode(), 1, 1, 2, "body: domain is missing"),
    ]


async def test_expired_records_go_with_their_errors(store: LedgerStore, migrated_dsn: str) -> None:
    now = datetime.now(UTC)
    await store.insert([record("old", now - timedelta(days=40)), record("new", now)])
    assert await store.delete_expired(30 * 86400) == 1
    conn = await asyncpg.connect(migrated_dsn)
    try:
        left = await conn.fetch("SELECT DISTINCT record_id FROM ingest_error")
    finally:
        await conn.close()
    assert [r["record_id"] for r in left] == ["new"]
