"""One fetch of classified batches → one transaction → acks; the delivery rules of the writer.

``ClassifiedWriter.handle(messages)`` consumes a fetch of ``dp.classified.>`` messages and
produces rows in the legacy tables (and messages on ``dp.dlq.writer-sqlserver``):

- a message that is not a valid ``ClassifiedBatch`` → DLQ (reason ``invalid_message``), ack;
- a domain ``SINK_ROUTES`` does not give to ``sqlserver`` → ack without writing;
- points that cannot be legacy rows (no integer sensor id, class ``rejected``) → DLQ
  (``bad_rows``, as a ClassifiedBatch of just those points, replayable), the rest is written;
- every other point of the fetch is written in ONE transaction; messages are acked after commit;
- transient error → nak every message with a delay growing with its delivery count, and count a
  failure on the circuit breaker; at ``MAX_DELIVER`` deliveries → DLQ (``max_deliver``);
- permanent error → the readings are bisected (in order, so alert close-before-open still sees
  time order) until each refused one is found; refused → DLQ with the database's reason
  (``bad_rows``), the others are stored, then every message is acked.

Nothing here raises: every failure is counted, logged once, and ends in ack, nak or DLQ.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from pydantic import ValidationError

from tributary_contracts import (
    MAX_DELIVER,
    WRITER_SQLSERVER_DURABLE,
    ClassifiedBatch,
    SinkRoutes,
    dead_letter_headers,
)
from tributary_contracts.dead_letters import one_line
from writer_sqlserver import metrics
from writer_sqlserver.breaker import CircuitBreaker
from writer_sqlserver.errors import Failure, classify_error, describe_error
from writer_sqlserver.store import LegacyStore, Reading, WriteCounts, batch_readings

log = structlog.get_logger(__name__)

SINK = "sqlserver"
CONSUMER = WRITER_SQLSERVER_DURABLE


class Delivery(Protocol):
    """The part of a JetStream message (nats-py ``Msg``) the writer uses."""

    subject: str
    data: bytes

    async def ack(self) -> None: ...
    async def nak(self, delay: float | None = None) -> None: ...


DeadLetterPublish = Callable[[bytes, dict[str, str]], Awaitable[None]]
"""Publish ``body`` with ``headers`` on the DLQ subject and await the JetStream ack."""


def deliveries(msg: Delivery) -> int:
    """How many times JetStream has delivered ``msg`` (1 for a message outside JetStream)."""
    try:
        return int(msg.metadata.num_delivered)  # type: ignore[attr-defined]
    except Exception:
        return 1


def backoff_delay(delivered: int, base: float, cap: float) -> float:
    """Redelivery delay after the ``delivered``-th failed delivery: base·2^(n-1), at most cap."""
    return float(min(cap, base * 2 ** max(0, min(delivered - 1, 30))))


@dataclass
class Pending:
    """A parsed message owned by this writer, waiting for its readings to be committed."""

    msg: Delivery
    batch: ClassifiedBatch
    delivered: int
    readings: list[Reading]
    indexes: list[int]  # index in batch.points of each reading
    refused: list[tuple[int, Exception]] = field(default_factory=list)  # (point index, why)


@dataclass
class ClassifiedWriter:
    """Applies the writer's delivery rules to fetched messages (see the module docstring)."""

    store: LegacyStore
    routes: SinkRoutes
    dead_letter: DeadLetterPublish
    breaker: CircuitBreaker
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    _settled: set[int] = field(default_factory=set, init=False, repr=False)

    async def handle(self, messages: Sequence[Delivery]) -> None:
        """Write, dead-letter, skip, ack or nak every message of one fetch; never raises."""
        metrics.MESSAGES_RECEIVED.inc(len(messages))
        pending: list[Pending] = []
        try:
            for msg in messages:
                admitted = await self._admit(msg)
                if admitted is not None:
                    pending.append(admitted)
            await self._store(pending)
        except Exception as exc:  # a bug or an unexpected failure: retry the unsettled ones
            metrics.ERRORS.labels("handle", type(exc).__name__).inc()
            log.exception("unexpected failure handling a fetch; redelivery scheduled")
            for msg in messages:
                if id(msg) not in self._settled:
                    await self._nak(msg, deliveries(msg))
        finally:
            for msg in messages:
                self._settled.discard(id(msg))

    async def _admit(self, msg: Delivery) -> Pending | None:
        """Parse and route one message; settle it at once unless it has readings to write."""
        delivered = deliveries(msg)
        try:
            batch = ClassifiedBatch.model_validate_json(msg.data)
        except (ValidationError, ValueError) as exc:
            metrics.ERRORS.labels("parse", type(exc).__name__).inc()
            reason = f"invalid ClassifiedBatch: {exc}"
            log.warning("invalid message dead-lettered", subject=msg.subject,
                        reason=one_line(reason))
            if await self._publish_dead_letter(msg, msg.data, "invalid_message", reason, delivered):
                await self._ack(msg)
            else:
                await self._nak(msg, delivered)
            return None
        if not self.routes.owns(SINK, batch.domain):
            metrics.MESSAGES_SKIPPED.inc()
            await self._ack(msg)
            return None
        readings, indexes, refused = batch_readings(batch)
        return Pending(msg, batch, delivered, readings, indexes, list(refused))

    async def _store(self, pending: list[Pending]) -> None:
        readings = [r for p in pending for r in p.readings]
        try:
            await self._write(readings)
        except Exception as exc:
            metrics.ERRORS.labels("write", type(exc).__name__).inc()
            if classify_error(exc) is Failure.TRANSIENT:
                self.breaker.record_failure()
                await self._retry_later(pending, exc)
                return
            try:
                await self._isolate(pending, readings, exc)
            except Exception as retry_exc:  # transient during isolation: stored parts dedupe
                metrics.ERRORS.labels("isolate", type(retry_exc).__name__).inc()
                self.breaker.record_failure()
                await self._retry_later(pending, retry_exc)
                return
        if readings:  # a fetch with nothing to write proves nothing about the database
            self.breaker.record_success()
        for p in pending:
            if p.refused and not await self._dead_letter_points(p):
                await self._nak(p.msg, p.delivered)
                continue
            await self._ack(p.msg)

    async def _write(self, readings: Sequence[Reading]) -> WriteCounts:
        """One transaction (in a worker thread: pyodbc blocks), with the commit metrics."""
        if not readings:
            return WriteCounts()
        started = time.perf_counter()
        counts = await asyncio.to_thread(self.store.write, readings)
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        metrics.ROWS_PER_COMMIT.observe(len(readings))
        for table, n in (("sensor_readings", counts.readings),
                         ("sensor_readings_latest", counts.latest), ("alerts", counts.alerts),
                         ("ml_events", counts.events), ("procedure", counts.procedure_calls)):
            if n:
                metrics.ROWS_SENT.labels(table).inc(n)
        return counts

    async def _isolate(
        self, pending: list[Pending], readings: list[Reading], first: Exception
    ) -> None:
        """Bisect the refused fetch in time order: store every writable reading, mark each
        refused one. A transient error propagates (the caller naks; stored parts dedupe)."""
        owners = [(p, index) for p in pending for index in p.indexes]
        refused = 0

        async def split(lo: int, hi: int, exc: Exception) -> None:
            nonlocal refused
            if hi - lo == 1:
                owner, index = owners[lo]
                owner.refused.append((index, exc))
                refused += 1
                return
            mid = (lo + hi) // 2
            for a, b in ((lo, mid), (mid, hi)):
                try:
                    await self._write(readings[a:b])
                except Exception as part_exc:
                    if classify_error(part_exc) is Failure.TRANSIENT:
                        raise
                    await split(a, b, part_exc)

        await split(0, len(readings), first)
        log.warning("rows refused by the database are dead-lettered", refused=refused,
                    error=describe_error(first))

    async def _dead_letter_points(self, p: Pending) -> bool:
        """Publish the refused points of ``p``, one DLQ message per distinct reason."""
        by_reason: dict[str, list[int]] = {}
        for index, exc in p.refused:
            by_reason.setdefault(describe_error(exc), []).append(index)
        ok = True
        for reason, indexes in by_reason.items():
            refused = p.batch.model_copy(
                update={"points": [p.batch.points[i] for i in sorted(indexes)]}
            )
            body = refused.model_dump_json().encode()
            ok &= await self._publish_dead_letter(p.msg, body, "bad_rows", reason, p.delivered)
        return ok

    async def _retry_later(self, pending: list[Pending], exc: BaseException) -> None:
        """Nak each message with its backoff, or dead-letter it after MAX_DELIVER deliveries."""
        if pending:
            log.warning("write failed, redelivery scheduled", messages=len(pending),
                        error=describe_error(exc), breaker=self.breaker.state.value)
        for p in pending:
            if p.delivered >= MAX_DELIVER:
                reason = f"gave up after {p.delivered} deliveries: {describe_error(exc)}"
                log.error("message dead-lettered after max deliveries", subject=p.msg.subject,
                          reason=one_line(reason))
                if await self._publish_dead_letter(
                    p.msg, p.msg.data, "max_deliver", reason, p.delivered
                ):
                    await self._ack(p.msg)
                    continue
            await self._nak(p.msg, p.delivered)

    async def _publish_dead_letter(
        self, msg: Delivery, body: bytes, kind: str, reason: str, delivered: int
    ) -> bool:
        """Publish on the DLQ and await its ack; False (logged) when the bus refused it."""
        headers = dead_letter_headers(CONSUMER, kind, reason, msg.subject, delivered, body)
        try:
            await self.dead_letter(body, headers)
        except Exception as exc:
            metrics.ERRORS.labels("dlq", type(exc).__name__).inc()
            log.warning("dead-letter publish failed; message will be redelivered",
                        subject=msg.subject, error=describe_error(exc))
            return False
        metrics.DLQ.labels(kind).inc()
        return True

    async def _ack(self, msg: Delivery) -> None:
        self._settled.add(id(msg))
        try:
            await msg.ack()
        except Exception as exc:  # redelivered later; idempotent writes make that harmless
            metrics.ERRORS.labels("ack", type(exc).__name__).inc()
            log.warning("ack failed; message will be redelivered", error=describe_error(exc))
            return
        metrics.MESSAGES_ACKED.inc()

    async def _nak(self, msg: Delivery, delivered: int) -> None:
        self._settled.add(id(msg))
        delay = backoff_delay(delivered, self.backoff_seconds, self.backoff_max_seconds)
        try:
            await msg.nak(delay=delay)
        except Exception as exc:  # the ack wait expires and JetStream redelivers anyway
            metrics.ERRORS.labels("nak", type(exc).__name__).inc()
            return
        metrics.MESSAGES_NAKKED.inc()
