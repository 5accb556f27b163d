"""Audit events → ``ingestion_audit_log``: one row per ``AuditEvent``, idempotent.

``AuditWriter.handle(messages)`` consumes a fetch of ``audit.>`` messages (``AuditEvent`` JSON,
durable ``writer-postgres-audit`` on ``AUDIT``) and produces rows (and messages on
``dp.dlq.writer-postgres-audit``), by the same delivery rules as the alerts loop:

- not a valid ``AuditEvent`` → DLQ (``invalid_message``), ack;
- every valid event of the fetch is inserted in ONE transaction, acked after the commit
  (``ON CONFLICT (event_id) DO NOTHING``: a redelivered event stores nothing twice);
- transient error → nak with backoff; at ``MAX_DELIVER`` deliveries → DLQ (``max_deliver``);
- permanent error → each event in its own transaction; the refused ones → DLQ (``bad_rows``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import asyncpg
import orjson
import structlog
from prometheus_client import Counter
from pydantic import ValidationError

from tributary_contracts import (
    MAX_DELIVER,
    WRITER_POSTGRES_AUDIT_DURABLE,
    AuditEvent,
    dead_letter_headers,
)
from tributary_contracts.dead_letters import one_line
from writer_postgres import metrics
from writer_postgres.consume import DeadLetterPublish, Delivery, backoff_delay, deliveries
from writer_postgres.errors import Failure, classify_error, describe_error

log = structlog.get_logger(__name__)

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
class Parsed:
    msg: Delivery
    event: AuditEvent
    delivered: int


@dataclass
class AuditWriter:
    """The delivery rules of the audit loop (see the module docstring). Never raises."""

    store: AuditStore
    dead_letter: DeadLetterPublish
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 60.0

    async def handle(self, messages: Sequence[Delivery]) -> None:
        settled: set[int] = set()
        try:
            parsed = []
            for msg in messages:
                delivered = deliveries(msg)
                try:
                    parsed.append(
                        Parsed(msg, AuditEvent.model_validate_json(msg.data), delivered)
                    )
                except (ValidationError, ValueError) as exc:
                    metrics.ERRORS.labels("audit_parse", type(exc).__name__).inc()
                    await self._give_up(msg, "invalid_message", f"invalid AuditEvent: {exc}",
                                        delivered, settled)
            await self._insert(parsed, settled)
        except Exception:  # a bug or an unexpected failure: every unsettled message comes back
            metrics.ERRORS.labels("audit_handle", "unexpected").inc()
            log.exception("unexpected failure handling audit events; redelivery scheduled")
            for msg in messages:
                if id(msg) not in settled:
                    await self._nak(msg, deliveries(msg), settled)

    async def _insert(self, parsed: list[Parsed], settled: set[int]) -> None:
        if not parsed:
            return
        try:
            self._count(await self.store.insert([p.event for p in parsed]), len(parsed))
        except Exception as exc:
            metrics.ERRORS.labels("audit_write", type(exc).__name__).inc()
            if classify_error(exc) is Failure.TRANSIENT:
                await self._retry_later(parsed, exc, settled)
                return
            for index, p in enumerate(parsed):  # permanent: find the refused event(s)
                try:
                    self._count(await self.store.insert([p.event]), 1)
                except Exception as one:
                    if classify_error(one) is Failure.TRANSIENT:
                        await self._retry_later(parsed[index:], one, settled)
                        return
                    await self._give_up(p.msg, "bad_rows", describe_error(one), p.delivered,
                                        settled)
                    continue
                await self._ack(p.msg, settled)
            return
        for p in parsed:
            await self._ack(p.msg, settled)

    @staticmethod
    def _count(inserted: int, events: int) -> None:
        AUDIT_EVENTS_WRITTEN.inc(inserted)
        AUDIT_EVENTS_DUPLICATE.inc(events - inserted)

    async def _retry_later(self, parsed: list[Parsed], exc: BaseException,
                           settled: set[int]) -> None:
        log.warning("audit write failed, redelivery scheduled", messages=len(parsed),
                    error=describe_error(exc))
        for p in parsed:
            if p.delivered >= MAX_DELIVER:
                reason = f"gave up after {p.delivered} deliveries: {describe_error(exc)}"
                await self._give_up(p.msg, "max_deliver", reason, p.delivered, settled)
            else:
                await self._nak(p.msg, p.delivered, settled)

    async def _give_up(self, msg: Delivery, kind: str, reason: str, delivered: int,
                       settled: set[int]) -> None:
        """Dead-letter ``msg`` and ack it; nak it when the DLQ publish fails."""
        log.warning("audit event dead-lettered", subject=msg.subject, kind=kind,
                    reason=one_line(reason))
        headers = dead_letter_headers(CONSUMER, kind, reason, msg.subject, delivered, msg.data)
        try:
            await self.dead_letter(msg.data, headers)
        except Exception as exc:
            metrics.ERRORS.labels("audit_dlq", type(exc).__name__).inc()
            await self._nak(msg, delivered, settled)
            return
        metrics.DLQ.labels(kind).inc()
        await self._ack(msg, settled)

    async def _ack(self, msg: Delivery, settled: set[int]) -> None:
        settled.add(id(msg))
        try:
            await msg.ack()
        except Exception as exc:  # redelivered later; inserting it again changes nothing
            metrics.ERRORS.labels("audit_ack", type(exc).__name__).inc()

    async def _nak(self, msg: Delivery, delivered: int, settled: set[int]) -> None:
        settled.add(id(msg))
        try:
            await msg.nak(delay=backoff_delay(delivered, self.backoff_seconds,
                                              self.backoff_max_seconds))
        except Exception as exc:  # the ack wait expires and JetStream redelivers anyway
            metrics.ERRORS.labels("audit_nak", type(exc).__name__).inc()
