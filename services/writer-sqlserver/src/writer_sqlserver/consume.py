"""One fetch of classified batches → one transaction → acks; the delivery rules of the writer.

``ClassifiedWriter.handle(messages)`` consumes a fetch of ``dp.classified.>`` messages and
produces rows in the legacy tables (and messages on ``dp.dlq.writer-sqlserver``). The rules are
shared with writer-postgres in ``tributary_runtime.writer``:

- a message is a ``ClassifiedBundle`` (or, on a former per-source subject, one
  ``ClassifiedBatch``); one that is not valid → DLQ (reason ``invalid_message``), ack;
- a domain ``SINK_ROUTES`` does not give to ``sqlserver`` → ack without writing;
- points that cannot be legacy rows (no integer sensor id, class ``rejected``) → DLQ
  (``bad_rows``, as a message of just those points on the subject's shape, replayable), the
  rest is written;
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
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import structlog

from tributary_contracts import WRITER_SQLSERVER_DURABLE, ClassifiedBatch
from tributary_runtime.writer import ClassifiedWriterBase, Pending
from writer_sqlserver import metrics
from writer_sqlserver.breaker import CircuitBreaker
from writer_sqlserver.errors import Failure, classify_error, describe_error
from writer_sqlserver.store import LegacyStore, Reading, WriteCounts, batch_readings

log = structlog.get_logger(__name__)

SINK = "sqlserver"
CONSUMER = WRITER_SQLSERVER_DURABLE


@dataclass(kw_only=True)
class ClassifiedWriter(ClassifiedWriterBase[Reading]):
    """Applies the writer's delivery rules to fetched messages (see the module docstring)."""

    SINK = SINK
    CONSUMER = CONSUMER
    metrics = metrics
    log = log
    sort_dead_letters = True

    store: LegacyStore
    breaker: CircuitBreaker

    def _rows(
        self, batch: ClassifiedBatch
    ) -> tuple[list[Reading], list[int], list[tuple[int, Exception]]]:
        return batch_readings(batch)

    def _is_transient(self, exc: BaseException) -> bool:
        return classify_error(exc) is Failure.TRANSIENT

    def _describe(self, exc: BaseException) -> str:
        return describe_error(exc)

    def _write_failed(self) -> None:
        self.breaker.record_failure()

    def _stored(self, pending: list[Pending[Reading]], rows: list[Reading], result: Any) -> None:
        if rows:  # a fetch with nothing to write proves nothing about the database
            self.breaker.record_success()

    def _retry_context(self) -> dict[str, Any]:
        return {"breaker": self.breaker.state.value}

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
        self, pending: list[Pending[Reading]], readings: list[Reading], first: Exception
    ) -> None:
        """Bisect the refused fetch in time order (``_bisect``): store every writable reading,
        mark each refused one. A transient error propagates (the caller naks; stored parts
        dedupe)."""
        _, refused = await self._bisect(pending, readings, first)
        log.warning("rows refused by the database are dead-lettered", refused=refused,
                    error=describe_error(first))
