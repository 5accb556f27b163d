"""The writer's small event loops (alerts, audit, rejects, raw ledger, shadow verdicts).

``EventWriter.handle(messages)`` writes a fetch of JSON events of one pydantic ``model`` and
settles each message by the fleet's delivery rules (``tributary_runtime.delivery``): every valid
event of the fetch in ONE transaction, acked after the commit; an invalid one dead-lettered
(``invalid_message``); on a permanent error each event in its own transaction, the refused ones
dead-lettered (``bad_rows``).

A subclass supplies ``_write`` (one transaction, returns how many rows it changed), ``_count``
(its metrics) and the names: ``CONSUMER`` (DLQ subject and header) and ``noun`` (log lines).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Generic, TypeVar

import structlog
from pydantic import BaseModel, ValidationError

from tributary_runtime.delivery import DeadLetterPublish, Message, Settler, deliveries
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
    msg: Message
    event: E
    delivered: int


@dataclass
class EventWriter(Generic[E]):
    """Writes and settles a fetch of events (see the module docstring). Never raises."""

    model: ClassVar[type[BaseModel]]
    CONSUMER: ClassVar[str]
    noun: ClassVar[str]

    store: Any
    dead_letter: DeadLetterPublish
    backoff_seconds: float = 1.0
    backoff_max_seconds: float = 60.0
    settle: Settler = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.settle = Settler(
            self.CONSUMER, self.dead_letter, metrics, log, describe_error,
            self.backoff_seconds, self.backoff_max_seconds,
        )

    async def _write(self, events: Sequence[E]) -> int:
        """Write ``events`` in one transaction; how many changed a row."""
        raise NotImplementedError

    def _count(self, changed: int, events: int) -> None:
        """Count ``changed`` rows out of ``events`` written."""

    def _received(self, messages: int) -> None:
        """Count a fetch of ``messages``."""

    async def handle(self, messages: Sequence[Message]) -> None:
        self._received(len(messages))
        await self.settle.handle(messages, self._handle(messages))

    async def _handle(self, messages: Sequence[Message]) -> None:
        parsed = []
        for msg in messages:
            event = await self._parse(msg)
            if event is not None:
                parsed.append(event)
        await self._write_all(parsed)

    async def _parse(self, msg: Message) -> Parsed[E] | None:
        delivered = deliveries(msg)
        try:
            event: Any = self.model.model_validate_json(msg.data)
        except (ValidationError, ValueError) as exc:
            metrics.ERRORS.labels("parse", type(exc).__name__).inc()
            reason = f"invalid {self.model.__name__}: {exc}"
            await self.settle.reject(msg, "invalid_message", reason, delivered)
            return None
        return Parsed(msg, event, delivered)

    async def _write_all(self, parsed: list[Parsed[E]]) -> None:
        if not parsed:
            return
        try:
            changed = await self._write([p.event for p in parsed])
        except Exception as exc:
            metrics.ERRORS.labels("write", type(exc).__name__).inc()
            if classify_error(exc) is Failure.TRANSIENT:
                await self._retry_later(parsed, exc)
                return
            await self._one_by_one(parsed)
            return
        self._count(changed, len(parsed))
        for p in parsed:
            await self.settle.ack(p.msg)

    async def _one_by_one(self, parsed: list[Parsed[E]]) -> None:
        """After a permanent error: write each event alone, dead-letter the refused ones."""
        for index, p in enumerate(parsed):
            try:
                self._count(await self._write([p.event]), 1)
            except Exception as exc:
                if classify_error(exc) is Failure.TRANSIENT:
                    metrics.ERRORS.labels("isolate", type(exc).__name__).inc()
                    await self._retry_later(parsed[index:], exc)
                    return
                await self.settle.reject(p.msg, "bad_rows", describe_error(exc), p.delivered)
                continue
            await self.settle.ack(p.msg)

    async def _retry_later(self, parsed: list[Parsed[E]], exc: BaseException) -> None:
        log.warning(f"{self.noun} write failed, redelivery scheduled", messages=len(parsed),
                    error=describe_error(exc))
        for p in parsed:
            await self.settle.retry(p.msg, p.delivered, exc)
