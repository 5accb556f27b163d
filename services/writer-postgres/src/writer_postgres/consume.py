"""One fetch of classified batches → one transaction → rows in ``data_points``.

``ClassifiedWriter`` is the ``tributary_runtime.writer.ClassifiedWriterBase`` of PostgreSQL (the
fetch, the bisection and how each message is settled are there, the delivery rules in
``tributary_runtime.delivery``); this module supplies the rows, the store and the error table.
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
    """Writes fetched messages to PostgreSQL and settles them (see the module docstring)."""

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
