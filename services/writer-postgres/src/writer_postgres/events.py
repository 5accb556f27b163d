"""The delivery rules shared by the writer's small event loops (alerts, audit). Never raises.

``EventWriter.handle(messages)`` consumes a fetch of JSON events of one pydantic ``model``:

- not a valid event → DLQ (``invalid_message``), ack;
- every valid event of the fetch is written in ONE transaction, acked after the commit;
- transient error → nak with backoff; at ``MAX_DELIVER`` deliveries → DLQ (``max_deliver``);
- permanent error → each event in its own transaction; the refused ones → DLQ (``bad_rows``).

A subclass supplies ``_write`` (one transaction, returns how many rows it changed), ``_count``
(its metrics) and the names: ``CONSUMER`` (DLQ subject and header), ``stage`` (prefix of the
``writer_postgres_errors`` stage label) and ``noun`` (for log lines).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, Generic, TypeVar

import structlog
from pydantic import BaseModel, ValidationError

from tributary_contracts import MAX_DELIVER, dead_letter_headers
from tributary_contracts.dead_letters import one_line
from tributary_runtime.redelivery import backoff_delay, deliveries
from tributary_runtime.writer import DeadLetterPublish, Delivery
from writer_postgres import metrics
from writer_postgres.errors import Failure, classify_error, describe_error

log = structlog.get_logger(__name__)

E = TypeVar("E", bound=BaseModel)


async def delete_expired(
    pool: Any, sql: str, retention_seconds: float, timeout: float, chunk: int = 10_000
) -> int:
    """Run a retention ``DELETE`` (``sql``: $1 retention seconds, $2 most rows per statement)
    until fewer than ``chunk`` rows go; how many went in all."""
    deleted = 0
    async with pool.acquire(timeout=timeout) as conn:
        while True:
            status = await conn.execute(sql, retention_seconds, chunk, timeout=timeout)
            count = int(status.rsplit(" ", 1)[-1])  # "DELETE <n>"
            deleted += count
            if count < chunk:
                return deleted


@dataclass
class Parsed(Generic[E]):
    msg: Delivery
    event: E
    delivered: int


@dataclass
class EventWriter(Generic[E]):
    """The delivery rules of an event loop (see the module docstring). Never raises."""

    model: ClassVar[type[BaseModel]]
    CONSUMER: ClassVar[str]
    stage: ClassVar[str]
    noun: ClassVar[str]

    store: Any
    dead_letter: DeadLetterPublish
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 60.0

    async def _write(self, events: Sequence[E]) -> int:
        """Write ``events`` in one transaction; how many changed a row."""
        raise NotImplementedError

    def _count(self, changed: int, events: int) -> None:
        """Count ``changed`` rows out of ``events`` written."""

    def _received(self, messages: int) -> None:
        """Count a fetch of ``messages``."""

    async def handle(self, messages: Sequence[Delivery]) -> None:
        self._received(len(messages))
        settled: set[int] = set()
        try:
            parsed = []
            for msg in messages:
                event = await self._parse(msg, settled)
                if event is not None:
                    parsed.append(event)
            await self._write_all(parsed, settled)
        except Exception:  # a bug or an unexpected failure: every unsettled message comes back
            metrics.ERRORS.labels(f"{self.stage}_handle", "unexpected").inc()
            log.exception(f"unexpected failure handling {self.noun}s; redelivery scheduled")
            for msg in messages:
                if id(msg) not in settled:
                    await self._nak(msg, deliveries(msg), settled)

    async def _parse(self, msg: Delivery, settled: set[int]) -> Parsed[E] | None:
        delivered = deliveries(msg)
        try:
            event: Any = self.model.model_validate_json(msg.data)
        except (ValidationError, ValueError) as exc:
            metrics.ERRORS.labels(f"{self.stage}_parse", type(exc).__name__).inc()
            await self._give_up(msg, "invalid_message", f"invalid {self.model.__name__}: {exc}",
                                delivered, settled)
            return None
        return Parsed(msg, event, delivered)

    async def _write_all(self, parsed: list[Parsed[E]], settled: set[int]) -> None:
        if not parsed:
            return
        try:
            changed = await self._write([p.event for p in parsed])
        except Exception as exc:
            metrics.ERRORS.labels(f"{self.stage}_write", type(exc).__name__).inc()
            if classify_error(exc) is Failure.TRANSIENT:
                await self._retry_later(parsed, exc, settled)
                return
            await self._one_by_one(parsed, settled)
            return
        self._count(changed, len(parsed))
        for p in parsed:
            await self._ack(p.msg, settled)

    async def _one_by_one(self, parsed: list[Parsed[E]], settled: set[int]) -> None:
        """After a permanent error: write each event alone, dead-letter the refused ones."""
        for index, p in enumerate(parsed):
            try:
                self._count(await self._write([p.event]), 1)
            except Exception as exc:
                if classify_error(exc) is Failure.TRANSIENT:
                    metrics.ERRORS.labels(f"{self.stage}_write", type(exc).__name__).inc()
                    await self._retry_later(parsed[index:], exc, settled)
                    return
                await self._give_up(p.msg, "bad_rows", describe_error(exc), p.delivered,
                                    settled)
                continue
            await self._ack(p.msg, settled)

    async def _retry_later(self, parsed: list[Parsed[E]], exc: BaseException,
                           settled: set[int]) -> None:
        log.warning(f"{self.noun} write failed, redelivery scheduled", messages=len(parsed),
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
        log.warning(f"{self.noun} dead-lettered", subject=msg.subject, kind=kind,
                    reason=one_line(reason))
        headers = dead_letter_headers(self.CONSUMER, kind, reason, msg.subject, delivered,
                                      msg.data)
        try:
            await self.dead_letter(msg.data, headers)
        except Exception as exc:
            metrics.ERRORS.labels(f"{self.stage}_dlq", type(exc).__name__).inc()
            log.warning(f"dead-letter publish failed; {self.noun} will be redelivered",
                        subject=msg.subject, error=describe_error(exc))
            await self._nak(msg, delivered, settled)
            return
        metrics.DLQ.labels(kind).inc()
        await self._ack(msg, settled)

    async def _ack(self, msg: Delivery, settled: set[int]) -> None:
        settled.add(id(msg))
        try:
            await msg.ack()
        except Exception as exc:  # redelivered later; writing it again changes nothing
            metrics.ERRORS.labels(f"{self.stage}_ack", type(exc).__name__).inc()

    async def _nak(self, msg: Delivery, delivered: int, settled: set[int]) -> None:
        settled.add(id(msg))
        try:
            await msg.nak(delay=backoff_delay(delivered, self.backoff_seconds,
                                              self.backoff_max_seconds))
        except Exception as exc:  # the ack wait expires and JetStream redelivers anyway
            metrics.ERRORS.labels(f"{self.stage}_nak", type(exc).__name__).inc()
