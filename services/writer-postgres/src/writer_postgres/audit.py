"""Audit events → ``ingestion_audit_log``: one row per ``AuditEvent``, idempotent.

``AuditWriter.handle(messages)`` consumes a fetch of ``audit.>`` messages (``AuditEvent`` JSON,
durable ``writer-postgres-audit`` on ``AUDIT``) and produces rows (and messages on
``dp.dlq.writer-postgres-audit``), settled as every event loop settles
(``writer_postgres.events``). ``ON CONFLICT (event_id) DO NOTHING``: a redelivered event stores
nothing twice.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import orjson
from prometheus_client import Counter

from tributary_contracts import WRITER_POSTGRES_AUDIT_DURABLE, AuditEvent
from writer_postgres.events import EventWriter

CONSUMER = WRITER_POSTGRES_AUDIT_DURABLE

AUDIT_EVENTS_WRITTEN = Counter(
    "writer_postgres_audit_events_written", "Audit events inserted into ingestion_audit_log."
)
AUDIT_EVENTS_DUPLICATE = Counter(
    "writer_postgres_audit_events_duplicate", "Audit events already stored (redeliveries)."
)

INSERT = """
INSERT INTO ingestion_audit_log (
    time, service, event, event_id, outcome, key_id, role, client_ip, target, reason, details
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11::jsonb)
ON CONFLICT (event_id) DO NOTHING
"""


def insert_args(event: AuditEvent) -> tuple[object, ...]:
    return (
        event.at, event.service, event.action, event.event_id, event.outcome, event.key_id,
        event.role, event.client_ip, event.target, event.reason,
        orjson.dumps(event.details).decode(),
    )


class AuditStore:
    """Inserts AuditEvents into ``ingestion_audit_log``."""

    def __init__(self, pool: asyncpg.Pool, timeout: float = 20.0) -> None:
        self._pool = pool
        self._timeout = timeout

    async def insert(self, events: Sequence[AuditEvent]) -> int:
        """Insert ``events`` in one transaction; returns how many were new."""
        inserted = 0
        async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
            for event in events:
                status = await conn.execute(INSERT, *insert_args(event), timeout=self._timeout)
                inserted += int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <0|1>"
        return inserted


@dataclass
class AuditWriter(EventWriter[AuditEvent]):
    """The audit loop's ``EventWriter`` (see the module docstring)."""

    model = AuditEvent
    CONSUMER = CONSUMER
    noun = "audit event"

    store: AuditStore

    async def _write(self, events: Sequence[AuditEvent]) -> int:
        return await self.store.insert(events)

    def _count(self, changed: int, events: int) -> None:
        AUDIT_EVENTS_WRITTEN.inc(changed)
        AUDIT_EVENTS_DUPLICATE.inc(events - changed)
