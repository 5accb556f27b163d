"""Alert lifecycle events → ``stream_alerts``: one row per alert, idempotent and order-tolerant.

``AlertWriter.handle(messages)`` consumes a fetch of ``dp.alert.>`` messages (``AlertEvent``
JSON, durable ``writer-postgres-alerts`` on ``DP_EVENTS``) and produces upserts of
``stream_alerts`` (and messages on ``dp.dlq.writer-postgres-alerts``):

- not a valid ``AlertEvent`` → DLQ (``invalid_message``), ack;
- every valid event of the fetch is applied in ONE transaction, acked after the commit;
- transient error → nak with backoff; at ``MAX_DELIVER`` deliveries → DLQ (``max_deliver``);
- permanent error → each event in its own transaction; the refused ones → DLQ (``bad_rows``).

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
import structlog
from pydantic import ValidationError

from tributary_contracts import (
    MAX_DELIVER,
    WRITER_POSTGRES_ALERTS_DURABLE,
    AlertEvent,
    AlertEventKind,
    dead_letter_headers,
)
from tributary_contracts.dead_letters import one_line
from writer_postgres import metrics
from writer_postgres.consume import DeadLetterPublish, Delivery, backoff_delay, deliveries
from writer_postgres.errors import Failure, classify_error, describe_error

log = structlog.get_logger(__name__)

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
class Parsed:
    msg: Delivery
    event: AlertEvent
    delivered: int


@dataclass
class AlertWriter:
    """The delivery rules of the alerts loop (see the module docstring). Never raises."""

    store: AlertStore
    dead_letter: DeadLetterPublish
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 60.0

    async def handle(self, messages: Sequence[Delivery]) -> None:
        metrics.ALERT_EVENTS_RECEIVED.inc(len(messages))
        settled: set[int] = set()
        try:
            parsed = []
            for msg in messages:
                event = await self._parse(msg, settled)
                if event is not None:
                    parsed.append(event)
            await self._apply(parsed, settled)
        except Exception:  # a bug or an unexpected failure: every unsettled message comes back
            metrics.ERRORS.labels("alerts_handle", "unexpected").inc()
            log.exception("unexpected failure handling alert events; redelivery scheduled")
            for msg in messages:
                if id(msg) not in settled:
                    await self._nak(msg, deliveries(msg), settled)

    async def _parse(self, msg: Delivery, settled: set[int]) -> Parsed | None:
        delivered = deliveries(msg)
        try:
            return Parsed(msg, AlertEvent.model_validate_json(msg.data), delivered)
        except (ValidationError, ValueError) as exc:
            metrics.ERRORS.labels("alerts_parse", type(exc).__name__).inc()
            reason = f"invalid AlertEvent: {exc}"
            log.warning("invalid alert event dead-lettered", subject=msg.subject,
                        reason=one_line(reason))
            if await self._dead_letter(msg, "invalid_message", reason, delivered):
                await self._ack(msg, settled)
            else:
                await self._nak(msg, delivered, settled)
            return None

    async def _apply(self, parsed: list[Parsed], settled: set[int]) -> None:
        if not parsed:
            return
        try:
            changed = await self.store.apply([p.event for p in parsed])
        except Exception as exc:
            metrics.ERRORS.labels("alerts_write", type(exc).__name__).inc()
            if classify_error(exc) is Failure.TRANSIENT:
                await self._retry_later(parsed, exc, settled)
                return
            await self._one_by_one(parsed, settled)
            return
        self._count(changed, len(parsed))
        for p in parsed:
            await self._ack(p.msg, settled)

    async def _one_by_one(self, parsed: list[Parsed], settled: set[int]) -> None:
        """After a permanent error: apply each event alone, dead-letter the refused ones."""
        for index, p in enumerate(parsed):
            try:
                self._count(await self.store.apply([p.event]), 1)
            except Exception as exc:
                if classify_error(exc) is Failure.TRANSIENT:
                    metrics.ERRORS.labels("alerts_write", type(exc).__name__).inc()
                    await self._retry_later(parsed[index:], exc, settled)
                    return
                log.warning("alert event refused by the database is dead-lettered",
                            alert_id=p.event.alert_id, error=describe_error(exc))
                if not await self._dead_letter(p.msg, "bad_rows", describe_error(exc),
                                               p.delivered):
                    await self._nak(p.msg, p.delivered, settled)
                    continue
            await self._ack(p.msg, settled)

    @staticmethod
    def _count(changed: int, applied: int) -> None:
        metrics.ALERT_EVENTS_APPLIED.inc(changed)
        metrics.ALERT_EVENTS_UNCHANGED.inc(applied - changed)

    async def _retry_later(self, parsed: list[Parsed], exc: BaseException,
                           settled: set[int]) -> None:
        log.warning("alert write failed, redelivery scheduled", messages=len(parsed),
                    error=describe_error(exc))
        for p in parsed:
            if p.delivered >= MAX_DELIVER:
                reason = f"gave up after {p.delivered} deliveries: {describe_error(exc)}"
                log.error("alert event dead-lettered after max deliveries",
                          subject=p.msg.subject, reason=one_line(reason))
                if await self._dead_letter(p.msg, "max_deliver", reason, p.delivered):
                    await self._ack(p.msg, settled)
                    continue
            await self._nak(p.msg, p.delivered, settled)

    async def _dead_letter(self, msg: Delivery, kind: str, reason: str, delivered: int) -> bool:
        """Publish ``msg``'s body on the DLQ; False (logged) when the bus refused it."""
        headers = dead_letter_headers(CONSUMER, kind, reason, msg.subject, delivered, msg.data)
        try:
            await self.dead_letter(msg.data, headers)
        except Exception as exc:
            metrics.ERRORS.labels("alerts_dlq", type(exc).__name__).inc()
            log.warning("dead-letter publish failed; alert event will be redelivered",
                        subject=msg.subject, error=describe_error(exc))
            return False
        metrics.DLQ.labels(kind).inc()
        return True

    async def _ack(self, msg: Delivery, settled: set[int]) -> None:
        settled.add(id(msg))
        try:
            await msg.ack()
        except Exception as exc:  # redelivered later; applying it again changes nothing
            metrics.ERRORS.labels("alerts_ack", type(exc).__name__).inc()

    async def _nak(self, msg: Delivery, delivered: int, settled: set[int]) -> None:
        settled.add(id(msg))
        try:
            await msg.nak(delay=backoff_delay(delivered, self.backoff_seconds,
                                              self.backoff_max_seconds))
        except Exception as exc:  # the ack wait expires and JetStream redelivers anyway
            metrics.ERRORS.labels("alerts_nak", type(exc).__name__).inc()
