"""One fetch of classified batches → one transaction → acks; the delivery rules of the writer.

``ClassifiedWriter.handle(messages)`` consumes a fetch of ``dp.classified.>`` messages and
produces rows in ``data_points`` (and messages on ``dp.dlq.writer-postgres``):

- a message that is not a valid ``ClassifiedBatch`` → DLQ (reason ``invalid_message``), ack;
- a domain ``SINK_ROUTES`` gives another writer → ack without writing;
- every other message of the fetch is written in ONE transaction and acked after the commit;
- transient error → nak every message with a delay growing with its delivery count; a message
  already delivered ``MAX_DELIVER`` times goes to the DLQ (``max_deliver``) instead;
- permanent error → the rows are bisected until each refused row is found; refused rows go to
  the DLQ with the database's reason (``bad_rows``, grouped per message and reason, as a valid
  ClassifiedBatch so it can be replayed), the others are stored, then every message is acked.

Nothing here raises: every failure is counted, logged once, and ends in ack, nak or DLQ.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol

import structlog
from pydantic import ValidationError

from tributary_contracts import MAX_DELIVER, ClassifiedBatch, SinkRoutes, dead_letter_headers
from tributary_contracts.dead_letters import one_line
from writer_postgres import metrics
from writer_postgres.errors import Failure, classify_error, describe_error
from writer_postgres.store import PointStore, Row, batch_rows

log = structlog.get_logger(__name__)

SINK = "postgres"
CONSUMER = "writer-postgres"

# DLQ message headers (the body is the refused payload itself, so it can be replayed as is).


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
    except Exception:  # in-memory test brokers and core NATS messages carry no JS metadata
        return 1


def backoff_delay(delivered: int, base: float, cap: float) -> float:
    """Redelivery delay after the ``delivered``-th failed delivery: base·2^(n-1), at most cap."""
    return float(min(cap, base * 2 ** max(0, min(delivered - 1, 30))))


@dataclass
class Pending:
    """A parsed message owned by this writer, waiting for its rows to be committed."""

    msg: Delivery
    batch: ClassifiedBatch
    delivered: int
    rows: list[Row]
    row_points: list[int]  # index in batch.points of each row
    refused: list[tuple[int, Exception]] = field(default_factory=list)  # (point index, why)


@dataclass
class ClassifiedWriter:
    """Applies the writer's delivery rules to fetched messages (see the module docstring)."""

    store: PointStore
    routes: SinkRoutes
    dead_letter: DeadLetterPublish
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    # ids of the messages of the fetches in progress already acked or nakked (several consume
    # loops may share this writer; each removes its own ids when its fetch is done)
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
        """Parse and route one message; settle it at once unless it has rows to write."""
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
        rows, row_points, unbuildable = batch_rows(batch)
        return Pending(msg, batch, delivered, rows, row_points, unbuildable)

    async def _store(self, pending: list[Pending]) -> None:
        rows = [row for p in pending for row in p.rows]
        try:
            inserted = await self._write(rows)
        except Exception as exc:
            if classify_error(exc) is Failure.TRANSIENT:
                metrics.ERRORS.labels("write", type(exc).__name__).inc()
                await self._retry_later(pending, exc)
                return
            metrics.ERRORS.labels("write", type(exc).__name__).inc()
            try:
                inserted = await self._isolate(pending, rows, exc)
            except Exception as retry_exc:  # transient during isolation: stored rows are safe
                metrics.ERRORS.labels("isolate", type(retry_exc).__name__).inc()
                await self._retry_later(pending, retry_exc)
                return
        log.debug("fetch stored", messages=len(pending), rows=len(rows), inserted=inserted)
        for p in pending:
            if p.refused and not await self._dead_letter_points(p):
                await self._nak(p.msg, p.delivered)
                continue
            await self._ack(p.msg)

    async def _write(self, rows: Sequence[Row]) -> int:
        """One transaction, with the commit metrics."""
        if not rows:
            return 0
        started = time.perf_counter()
        inserted = await self.store.write_rows(rows)
        metrics.COMMIT_SECONDS.observe(time.perf_counter() - started)
        metrics.ROWS_PER_COMMIT.observe(len(rows))
        metrics.POINTS_WRITTEN.inc(inserted)
        metrics.POINTS_DUPLICATE.inc(len(rows) - inserted)
        return inserted

    async def _isolate(self, pending: list[Pending], rows: list[Row], first: Exception) -> int:
        """Bisect the refused fetch: store every writable row, mark each refused one.

        Bisecting the whole fetch finds k bad rows among n in about 2·k·log2(n) small
        transactions (retrying message by message would cost one per message first). A
        transient error propagates: the caller naks, and the stored halves dedupe on replay.
        """
        owners = [(p, point) for p in pending for point in p.row_points]
        inserted = 0
        refused = 0
        failing: list[tuple[int, int, Exception]] = [(0, len(rows), first)]
        while failing:
            lo, hi, exc = failing.pop()
            if hi - lo == 1:
                owner, point = owners[lo]
                owner.refused.append((point, exc))
                refused += 1
                continue
            mid = (lo + hi) // 2
            for a, b in ((lo, mid), (mid, hi)):
                try:
                    inserted += await self._write(rows[a:b])
                except Exception as part_exc:
                    if classify_error(part_exc) is Failure.TRANSIENT:
                        raise
                    failing.append((a, b, part_exc))
        log.warning("rows refused by the database are dead-lettered", refused=refused,
                    stored=inserted, error=describe_error(first))
        return inserted

    async def _dead_letter_points(self, p: Pending) -> bool:
        """Publish the refused points of ``p``, one DLQ message per distinct reason."""
        by_reason: dict[str, list[int]] = {}
        for point, exc in p.refused:
            by_reason.setdefault(describe_error(exc), []).append(point)
        ok = True
        for reason, points in by_reason.items():
            refused = p.batch.model_copy(update={"points": [p.batch.points[i] for i in points]})
            body = refused.model_dump_json().encode()
            ok &= await self._publish_dead_letter(p.msg, body, "bad_rows", reason, p.delivered)
        return ok

    async def _retry_later(self, pending: list[Pending], exc: BaseException) -> None:
        """Nak each message with its backoff, or dead-letter it after MAX_DELIVER deliveries."""
        if pending:
            log.warning("write failed, redelivery scheduled", messages=len(pending),
                        error=describe_error(exc))
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
        except Exception as exc:  # redelivered later; the unique key makes that harmless
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
