"""Gateway rejects → ingest_rejects: rows per refused item (real PostgreSQL), the excerpt cap,
retention, and the running writer's rejects loop (real NATS + PostgreSQL)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tributary_contracts import (
    DLQ_KIND,
    DP_DLQ,
    DP_REJECTED,
    WRITER_POSTGRES_REJECTS_DURABLE,
    Namespace,
    RejectedEntry,
    RejectedInput,
    Transport,
)
from writer_postgres.rejects import RejectStore, cap, reject_rows

T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)

pytestmark = pytest.mark.integration


def rejected(
    transport: Transport = Transport.HTTP,
    *,
    source: str = "server-01",
    excerpt: str = '{"stream_id":"cpu","value":"NaN"}',
    at: datetime = T0,
    entries: int = 1,
) -> RejectedInput:
    return RejectedInput(
        transport=transport,
        domain="infrastructure",
        source_id=source,
        received_at=at,
        rejected=[
            RejectedEntry(
                index=i,
                stream_id="cpu",
                reason="value: must be a finite number",
                excerpt=excerpt,
                topic="infrastructure/server-01/cpu/data" if transport is Transport.MQTT else None,
            )
            for i in range(entries)
        ],
    )


async def reject_rows_in(dsn: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        records = await conn.fetch(
            "SELECT time, transport, domain, source_id, stream_id, reason, payload_excerpt,"
            " item_index, topic, excerpt_truncated FROM ingest_rejects"
            " ORDER BY transport, time, item_index"
        )
    finally:
        await conn.close()
    return [dict(r) for r in records]


@pytest.fixture
async def store(migrated_dsn: str) -> Any:
    pool = await asyncpg.create_pool(migrated_dsn, min_size=1, max_size=2)
    yield RejectStore(pool, excerpt_bytes=16)
    await pool.close()


def test_cap_cuts_on_a_character_boundary() -> None:
    assert cap("ab€cd", 4) == ("ab", True)  # € is 3 bytes: never half of it
    assert cap("ab€cd", 7) == ("ab€cd", False)


def test_reject_ids_differ_per_item_and_repeat_for_the_same_message() -> None:
    ids = [row[0] for row in reject_rows(rejected(entries=3), 100)]
    assert len(set(ids)) == 3
    assert ids == [row[0] for row in reject_rows(rejected(entries=3), 100)]
    later = rejected(entries=3, at=T0 + timedelta(seconds=1))
    assert not set(ids) & {row[0] for row in reject_rows(later, 100)}


async def test_every_refused_item_is_one_row_and_a_redelivery_adds_none(
    store: RejectStore, migrated_dsn: str
) -> None:
    message = rejected(Transport.MQTT, entries=2)
    assert await store.insert([message, rejected(Transport.CSV)]) == 3
    assert await store.insert([message]) == 0

    rows = await reject_rows_in(migrated_dsn)
    assert [(r["transport"], r["item_index"], r["topic"]) for r in rows] == [
        ("csv", 0, None),
        ("mqtt", 0, "infrastructure/server-01/cpu/data"),
        ("mqtt", 1, "infrastructure/server-01/cpu/data"),
    ]
    assert {(r["reason"], r["payload_excerpt"], r["excerpt_truncated"]) for r in rows} == {
        ("value: must be a finite number", '{"stream_id":"cp', True)
    }


async def test_rows_past_the_retention_are_deleted(store: RejectStore, migrated_dsn: str) -> None:
    now = datetime.now(UTC)
    await store.insert([rejected(at=now - timedelta(days=10)), rejected(at=now, source="new")])
    assert await store.delete_expired(retention_seconds=5 * 86400, chunk=1) == 1
    assert [r["source_id"] for r in await reject_rows_in(migrated_dsn)] == ["new"]


async def test_the_running_writer_stores_rejects_from_every_transport(
    run_writer: Any, jetstream: Any, bus_prefix: str, database_dsn: str
) -> None:
    ns = Namespace(bus_prefix)
    async with run_writer(reject_excerpt_bytes=4096):
        for transport in Transport:
            message = rejected(transport)
            await jetstream.publish(
                ns.rejected_subject(transport.value),
                message.model_dump_json().encode(),
                stream=ns.stream(DP_REJECTED),
            )
        await jetstream.publish(
            ns.rejected_subject("http"), b"{oops", stream=ns.stream(DP_REJECTED)
        )
        deadline = asyncio.get_running_loop().time() + 20
        rows: list[dict[str, Any]] = []
        while len(rows) < len(Transport) and asyncio.get_running_loop().time() < deadline:
            await asyncio.sleep(0.1)
            rows = await reject_rows_in(database_dsn)
        sub = await jetstream.pull_subscribe(
            ns.dlq_subject(WRITER_POSTGRES_REJECTS_DURABLE), stream=ns.stream(DP_DLQ)
        )
        [letter] = await sub.fetch(1, timeout=5)
        await sub.unsubscribe()

    assert sorted(r["transport"] for r in rows) == sorted(t.value for t in Transport)
    assert {r["payload_excerpt"] for r in rows} == {'{"stream_id":"cpu","value":"NaN"}'}
    assert letter.data == b"{oops" and letter.headers[DLQ_KIND] == "invalid_message"
