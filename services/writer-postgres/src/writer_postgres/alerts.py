"""Alert lifecycle events → ``stream_alerts``: one row per alert, idempotent and order-tolerant.

``AlertWriter.handle(messages)`` consumes a fetch of ``dp.alert.>`` messages (``AlertEvent``
JSON, durable ``writer-postgres-alerts`` on ``DP_EVENTS``) and produces upserts of
``stream_alerts`` (and messages on ``dp.dlq.writer-postgres-alerts``), every valid event of the
fetch in one transaction, settled as every event loop settles (``writer_postgres.events``).

Applying is a merge, not an overwrite: an event replaces the row's data only when it is *further
along* than what the row holds — ordered by (closed?, violation_count, last_at, emitted_at).
So a redelivered or duplicated event changes nothing (not even ``updated_at``), a ``closed``
that arrives before its ``opened`` still ends as the correct closed row (the late ``opened``
is older and ignored), and a ``closed`` row never reopens. Alerts of every domain are stored,
whichever writer ``SINK_ROUTES`` gives the domain's points: this table is the fleet's alert store.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg

from tributary_contracts import WRITER_POSTGRES_ALERTS_DURABLE, AlertEvent, AlertEventKind
from writer_postgres import metrics
from writer_postgres.events import EventWriter

CONSUMER = WRITER_POSTGRES_ALERTS_DURABLE

UPSERT = """
INSERT INTO stream_alerts AS a (
    alert_id, domain, source_id, stream_id, severity, status, rule, reason, config_version,
    opened_at, closed_at, first_value, first_at, last_value, last_at, peak_value,
    violation_count, last_event, emitted_at, updated_at
) VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13, $14, $15, $16, $17, $18, $19,
          now())
ON CONFLICT (alert_id) DO UPDATE SET
    domain = EXCLUDED.domain, source_id = EXCLUDED.source_id, stream_id = EXCLUDED.stream_id,
    severity = EXCLUDED.severity, status = EXCLUDED.status, rule = EXCLUDED.rule,
    reason = EXCLUDED.reason, config_version = EXCLUDED.config_version,
    opened_at = EXCLUDED.opened_at, closed_at = EXCLUDED.closed_at,
    first_value = EXCLUDED.first_value, first_at = EXCLUDED.first_at,
    last_value = EXCLUDED.last_value, last_at = EXCLUDED.last_at,
    peak_value = EXCLUDED.peak_value, violation_count = EXCLUDED.violation_count,
    last_event = EXCLUDED.last_event, emitted_at = EXCLUDED.emitted_at, updated_at = now()
WHERE (a.status = 'closed', a.violation_count, a.last_at, a.emitted_at)
    < (EXCLUDED.status = 'closed', EXCLUDED.violation_count, EXCLUDED.last_at, EXCLUDED.emitted_at)
"""
"""Insert the alert, or move its row forward; a row already as far along is left untouched."""

OPEN_ALERTS = """
SELECT alert_id, domain, source_id, stream_id, severity, rule, reason, opened_at, first_value,
       last_value, last_at, peak_value, violation_count, config_version
FROM stream_alerts WHERE status = 'open' ORDER BY opened_at
"""
"""Which alerts are open now (served by the partial index ``stream_alerts_open``)."""


def status_of(event: AlertEvent) -> str:
    return "closed" if event.event is AlertEventKind.CLOSED else "open"


def upsert_args(event: AlertEvent) -> tuple[object, ...]:
    """Parameters of ``UPSERT`` for one event."""
    return (
        event.alert_id, event.domain, event.source_id, event.stream_id, event.severity.value,
        status_of(event), event.rule, event.reason, event.config_version, event.opened_at,
        event.closed_at, event.first_value, event.first_at, event.last_value, event.last_at,
        event.peak_value, event.violation_count, event.event.value, event.emitted_at,
    )


class AlertStore:
    """Applies AlertEvents to ``stream_alerts``."""

    def __init__(self, pool: asyncpg.Pool, timeout: float = 20.0) -> None:
        self._pool = pool
        self._timeout = timeout

    async def apply(self, events: Sequence[AlertEvent]) -> int:
        """Apply ``events`` in order in one transaction; returns how many changed a row."""
        if not events:
            return 0
        changed = 0
        async with self._pool.acquire(timeout=self._timeout) as conn, conn.transaction():
            for event in events:
                status = await conn.execute(UPSERT, *upsert_args(event), timeout=self._timeout)
                changed += int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <0|1>"
        return changed


@dataclass
class AlertWriter(EventWriter[AlertEvent]):
    """The alerts loop's ``EventWriter`` (see the module docstring)."""

    model = AlertEvent
    CONSUMER = CONSUMER
    noun = "alert event"

    store: AlertStore

    async def _write(self, events: Sequence[AlertEvent]) -> int:
        return await self.store.apply(events)

    def _count(self, changed: int, events: int) -> None:
        metrics.ALERT_EVENTS_APPLIED.inc(changed)
        metrics.ALERT_EVENTS_UNCHANGED.inc(events - changed)

    def _received(self, messages: int) -> None:
        metrics.ALERT_EVENTS_RECEIVED.inc(messages)
