"""One fetch of classified batches → one transaction → rows in the legacy tables.

``ClassifiedWriter`` is the ``tributary_runtime.writer.ClassifiedWriterBase`` of SQL Server (the
fetch, the bisection and how each message is settled are there, the delivery rules in
``tributary_runtime.delivery``); this module supplies the readings, the store and the error
table. Points that cannot be legacy rows (no integer sensor id, class ``rejected``) are refused
before writing and dead-lettered (``bad_rows``) with the database's refusals; readings are
bisected in time order, so alert close-before-open still sees it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import structlog

from tributary_contracts import WRITER_SQLSERVER_DURABLE, ClassifiedBatch
from tributary_runtime.writer import ClassifiedWriterBase, Pending, WriterMetrics
from writer_sqlserver import metrics
from writer_sqlserver.errors import Failure, classify_error, describe_error
from writer_sqlserver.store import LegacyStore, Reading, WriteCounts, batch_readings

log = structlog.get_logger(__name__)

SINK = "sqlserver"
CONSUMER = WRITER_SQLSERVER_DURABLE


@dataclass(kw_only=True)
class ClassifiedWriter(ClassifiedWriterBase[Reading, WriteCounts]):
    """Writes fetched messages to SQL Server and settles them (see the module docstring)."""

    SINK = SINK
    CONSUMER = CONSUMER
    metrics: ClassVar[WriterMetrics] = metrics
    log = log
    sort_dead_letters = True

    store: LegacyStore

    def _rows(
        self, batch: ClassifiedBatch
    ) -> tuple[list[Reading], list[int], list[tuple[int, Exception]]]:
        return batch_readings(batch)

    def _is_transient(self, exc: BaseException) -> bool:
        return classify_error(exc) is Failure.TRANSIENT

    def _describe(self, exc: BaseException) -> str:
        return describe_error(exc)

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
