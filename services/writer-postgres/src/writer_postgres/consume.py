"""One fetch of classified batches → one transaction → acks; the delivery rules of the writer.

``ClassifiedWriter.handle(messages)`` consumes a fetch of ``dp.classified.>`` messages and
produces rows in ``data_points`` (and messages on ``dp.dlq.writer-postgres``). The rules
(invalid message → DLQ ``invalid_message``; another sink's domain → ack without writing; one
transaction per fetch, ack after commit; transient error → nak with backoff, ``max_deliver`` DLQ;
permanent error → refused rows dead-lettered as ``bad_rows``) are shared with writer-sqlserver in
``tributary_runtime.writer``; so is the bisection; this module supplies the rows and the store.

Nothing here raises: every failure is counted, logged once, and ends in ack, nak or DLQ.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import structlog

from tributary_contracts import ClassifiedBatch
from tributary_runtime.writer import ClassifiedWriterBase, Pending, WriterMetrics
from writer_postgres import metrics
from writer_postgres.errors import Failure, classify_error, describe_error
from writer_postgres.store import Row, RowStore, batch_rows

log = structlog.get_logger(__name__)

SINK = "postgres"
CONSUMER = "writer-postgres"


@dataclass(kw_only=True)
class ClassifiedWriter(ClassifiedWriterBase[Row, int]):
    """Applies the writer's delivery rules to fetched messages (see the module docstring)."""

    SINK = SINK
    CONSUMER = CONSUMER
    metrics: ClassVar[WriterMetrics] = metrics
    log = log

    store: RowStore

    def _rows(
        self, batch: ClassifiedBatch
    ) -> tuple[list[Row], list[int], list[tuple[int, Exception]]]:
        return batch_rows(batch)

    def _is_transient(self, exc: BaseException) -> bool:
        return classify_error(exc) is Failure.TRANSIENT

    def _describe(self, exc: BaseException) -> str:
        return describe_error(exc)

    def _stored(self, pending: list[Pending[Row]], rows: list[Row], result: int | None) -> None:
        log.debug("fetch stored", messages=len(pending), rows=len(rows), inserted=result)

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

    async def _isolate(self, pending: list[Pending[Row]], rows: list[Row], first: Exception) -> int:
        """Bisect the refused fetch (``_bisect``): store every writable row, mark each refused
        one; the rows inserted."""
        parts, refused = await self._bisect(pending, rows, first)
        inserted = sum(parts)
        log.warning("rows refused by the database are dead-lettered", refused=refused,
                    stored=inserted, error=describe_error(first))
        return inserted
