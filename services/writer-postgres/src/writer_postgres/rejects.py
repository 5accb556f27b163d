"""Gateway rejects → ``ingest_rejects``: one row per refused item, idempotent, size-capped.

``RejectWriter.handle(messages)`` consumes a fetch of ``dp.rejected.>`` messages
(``RejectedInput`` JSON, durable ``writer-postgres-rejects`` on ``DP_REJECTED``) and produces one
``ingest_rejects`` row per ``RejectedEntry`` (and messages on ``dp.dlq.writer-postgres-rejects``),
settled as every event loop settles (``writer_postgres.events``).

``reject_id`` hashes the entry with its envelope (transport, domain, source, received_at), so a
redelivered message stores nothing twice. The excerpt (the item as the gateway received it) is
cut to ``excerpt_bytes`` on a UTF-8 character boundary; ``excerpt_truncated`` says it was.
Rows older than ``REJECTS_RETENTION_DAYS`` are deleted by the maintenance task
(``delete_expired``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
from prometheus_client import Counter

from tributary_contracts import WRITER_POSTGRES_REJECTS_DURABLE, RejectedInput
from writer_postgres.events import EventWriter, delete_expired

CONSUMER = WRITER_POSTGRES_REJECTS_DURABLE

REJECTS_STORED = Counter(
    "writer_postgres_rejects_stored",
    "Refused items committed to ingest_rejects (new or already there), by transport.",
    ["transport"],
)
REJECTS_WRITTEN = Counter(
    "writer_postgres_rejects_written", "Refused items inserted into ingest_rejects."
)
REJECTS_DUPLICATE = Counter(
    "writer_postgres_rejects_duplicate", "Refused items already stored (redeliveries)."
)
REJECTS_EXPIRED = Counter(
    "writer_postgres_rejects_expired", "ingest_rejects rows deleted by the retention task."
)

INSERT = """
INSERT INTO ingest_rejects (
    reject_id, time, transport, domain, source_id, stream_id, reason, payload_excerpt,
    item_index, topic, excerpt_truncated
)
SELECT * FROM unnest($1::text[], $2::timestamptz[], $3::text[], $4::text[], $5::text[],
                     $6::text[], $7::text[], $8::text[], $9::integer[], $10::text[],
                     $11::boolean[])
ON CONFLICT (reject_id) DO NOTHING
"""

DELETE_EXPIRED = """
DELETE FROM ingest_rejects WHERE id IN (
    SELECT id FROM ingest_rejects WHERE time < now() - make_interval(secs => $1) LIMIT $2
)
"""


def cap(text: str, limit: int) -> tuple[str, bool]:
    """``text`` cut to at most ``limit`` UTF-8 bytes (never inside a character); truncated?"""
    data = text.encode()
    if len(data) <= limit:
        return text, False
    return data[:limit].decode(errors="ignore"), True


def reject_rows(message: RejectedInput, excerpt_bytes: int) -> list[tuple[object, ...]]:
    """One row tuple per refused item of ``message`` (column order of ``INSERT``)."""
    envelope = (
        f"{message.transport.value}\x1f{message.domain}\x1f{message.source_id}"
        f"\x1f{message.received_at.isoformat()}"
    )
    rows: list[tuple[object, ...]] = []
    for position, entry in enumerate(message.rejected):
        item = entry.model_dump_json()
        reject_id = hashlib.sha256(f"{envelope}\x1f{position}\x1f{item}".encode()).hexdigest()
        excerpt, truncated = cap(entry.excerpt, excerpt_bytes)
        rows.append(
            (
                reject_id,
                message.received_at,
                message.transport.value,
                message.domain,
                message.source_id,
                entry.stream_id,
                entry.reason,
                excerpt,
                entry.index,
                entry.topic,
                truncated,
            )
        )
    return rows


class RejectStore:
    """Inserts refused items into ``ingest_rejects``; deletes the expired ones."""

    def __init__(self, pool: asyncpg.Pool, timeout: float = 20.0, excerpt_bytes: int = 1024):
        self._pool = pool
        self._timeout = timeout
        self._excerpt_bytes = excerpt_bytes

    async def insert(self, messages: Sequence[RejectedInput]) -> int:
        """Insert every item of ``messages`` in one statement; returns how many were new."""
        rows = [row for m in messages for row in reject_rows(m, self._excerpt_bytes)]
        columns = [list(c) for c in zip(*rows, strict=True)]
        async with self._pool.acquire(timeout=self._timeout) as conn:
            status = await conn.execute(INSERT, *columns, timeout=self._timeout)
        inserted = int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <n>"
        for message in messages:
            REJECTS_STORED.labels(message.transport.value).inc(len(message.rejected))
        REJECTS_WRITTEN.inc(inserted)
        REJECTS_DUPLICATE.inc(len(rows) - inserted)
        return inserted

    async def delete_expired(self, retention_seconds: float, chunk: int = 10_000) -> int:
        """Delete rows older than ``retention_seconds``, ``chunk`` rows per statement."""
        deleted = await delete_expired(
            self._pool, DELETE_EXPIRED, retention_seconds, self._timeout, chunk
        )
        REJECTS_EXPIRED.inc(deleted)
        return deleted


@dataclass
class RejectWriter(EventWriter[RejectedInput]):
    """The rejects loop's ``EventWriter`` (see the module docstring)."""

    model = RejectedInput
    CONSUMER = CONSUMER
    noun = "reject"

    store: RejectStore

    async def _write(self, events: Sequence[RejectedInput]) -> int:
        return await self.store.insert(events)

    def _count(self, changed: int, events: int) -> None:
        """Counted per row in ``RejectStore.insert``."""
