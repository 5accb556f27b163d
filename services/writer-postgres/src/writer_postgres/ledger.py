"""The raw ledger → ``raw_record`` + ``ingest_error`` (seed 003), one row per ``RawRecord``.

``LedgerWriter.handle(messages)`` consumes a fetch of ``dp.ledger.>`` messages (``RawRecord``
JSON, durable ``writer-postgres-ledger`` on ``DP_LEDGER``) and produces a ``raw_record`` row
(the input's bytes, the point keys published, the reply status) plus one ``ingest_error`` row
per refused point or for the whole input's error, settled as every event loop settles
(``writer_postgres.events``). ``record_id`` is unique: a
redelivery stores nothing twice. Rows older than ``RAW_LEDGER_RETENTION_DAYS`` are deleted by
the maintenance task.
"""

from __future__ import annotations

import base64
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import orjson

from tributary_contracts import WRITER_POSTGRES_LEDGER_DURABLE, RawRecord
from writer_postgres.events import EventWriter, delete_expired

CONSUMER = WRITER_POSTGRES_LEDGER_DURABLE

INSERT_RECORD = """
INSERT INTO raw_record (record_id, time, transport, domain, source_id, content_type, payload,
                        payload_bytes, truncated, status, point_keys, error)
VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb, $12)
ON CONFLICT (record_id) DO NOTHING
"""

INSERT_ERRORS = """
INSERT INTO ingest_error (record_id, position, item_index, stream_id, reason, excerpt)
SELECT $1, * FROM unnest($2::integer[], $3::integer[], $4::text[], $5::text[], $6::text[])
ON CONFLICT (record_id, position) DO NOTHING
"""

DELETE_EXPIRED = """
DELETE FROM raw_record WHERE id IN (
    SELECT id FROM raw_record WHERE time < now() - make_interval(secs => $1) LIMIT $2
)
"""


def record_args(record: RawRecord) -> tuple[object, ...]:
    keys = [{"stream_id": p.stream_id, "ts": p.ts.isoformat()} for p in record.accepted]
    return (
        record.record_id,
        record.received_at,
        record.transport.value,
        record.domain,
        record.source_id,
        record.content_type,
        base64.b64decode(record.payload_b64),
        record.payload_bytes,
        record.truncated,
        record.status,
        orjson.dumps(keys).decode(),
        record.error,
    )


def error_columns(record: RawRecord) -> list[list[object]]:
    """Columns of ``INSERT_ERRORS`` (after ``record_id``): per refused point, then the error."""
    rows: list[tuple[object, ...]] = [
        (i, e.index, e.stream_id, e.reason, e.excerpt) for i, e in enumerate(record.rejected)
    ]
    if record.error:
        rows.append((len(rows), None, None, record.error, None))
    return [list(c) for c in zip(*rows, strict=True)] if rows else []


class LedgerStore:
    """Inserts RawRecords; deletes the expired ones (their errors go with them)."""

    def __init__(self, pool: asyncpg.Pool, timeout: float = 20.0) -> None:
        self._pool = pool
        self._timeout = timeout

    async def insert(self, records: Sequence[RawRecord]) -> int:
        """Insert ``records`` in one transaction; returns how many were new."""
        inserted = 0
        async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
            for record in records:
                status = await conn.execute(
                    INSERT_RECORD, *record_args(record), timeout=self._timeout
                )
                inserted += int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <0|1>"
                columns = error_columns(record)
                if columns:
                    await conn.execute(
                        INSERT_ERRORS, record.record_id, *columns, timeout=self._timeout
                    )
        return inserted

    async def delete_expired(self, retention_seconds: float, chunk: int = 10_000) -> int:
        return await delete_expired(
            self._pool, DELETE_EXPIRED, retention_seconds, self._timeout, chunk
        )


@dataclass
class LedgerWriter(EventWriter[RawRecord]):
    """The ledger loop's ``EventWriter`` (see the module docstring)."""

    model = RawRecord
    CONSUMER = CONSUMER
    noun = "raw record"

    store: LedgerStore

    async def _write(self, events: Sequence[RawRecord]) -> int:
        return await self.store.insert(events)
