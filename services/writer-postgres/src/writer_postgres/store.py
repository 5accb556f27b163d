"""Writing classified points into ``data_points``: COPY, and COPY into staging on a replay.

First try: the rows are COPYed (binary) straight into ``data_points``, one statement outside
an explicit transaction (a COPY is all or nothing by itself; BEGIN and COMMIT would be two more
round trips per fetch). Almost every fetch holds only new points, and this costs PostgreSQL
half the CPU of the upsert below (``bench/write_paths.py``: 2.6 against 5.3 µs per row). When
the unique key refuses a row (a replay, a retry, the same point twice in one fetch) the COPY
stores nothing and the rows go the way that skips what is stored, in one transaction: COPY into
a per-connection temporary staging table, then ``INSERT … ON CONFLICT (domain, source_id,
stream_id, time) DO NOTHING``. Either way a point already stored is skipped silently: that is
the idempotency promise. The staging table is created once per connection and emptied by every
commit.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import UTC
from typing import Any, Protocol

import asyncpg
import orjson

from tributary_contracts import ClassifiedBatch, ClassifiedPoint

STAGING_TABLE = "data_points_staging"

COLUMNS = (
    "time", "domain", "source_id", "stream_id", "value", "cls", "reason", "stream_type",
    "sequence", "metadata", "transport", "received_at", "rule", "config_version", "legacy",
)
"""Column order of a row tuple (and of the staging table)."""

Row = tuple[Any, ...]

_STAGING_DDL = f"""
CREATE TEMP TABLE IF NOT EXISTS {STAGING_TABLE} (
    time timestamptz, domain text, source_id text, stream_id text, value double precision,
    cls text, reason text, stream_type text, sequence bigint, metadata text, transport text,
    received_at timestamptz, rule text, config_version bigint, legacy text
) ON COMMIT DELETE ROWS
"""

_CASTS = {"metadata": "metadata::jsonb", "legacy": "legacy::jsonb"}
_COLUMN_LIST = ", ".join(COLUMNS)
_INSERT = (
    f"INSERT INTO data_points ({_COLUMN_LIST}) "
    f"SELECT {', '.join(_CASTS.get(c, c) for c in COLUMNS)} FROM {STAGING_TABLE} "
    "ON CONFLICT (domain, source_id, stream_id, time) DO NOTHING"
)

_EMPTY_JSON = "{}"


BatchFields = tuple[str, str, str, str, Any]
"""The row values every point of a batch shares: domain, source_id, cls, transport, received_at."""


def batch_fields(batch: ClassifiedBatch) -> BatchFields:
    # Read once per batch: an enum's ``.value`` per point was a tenth of the writer's CPU.
    # received_at with the shared UTC tzinfo: asyncpg encodes it ~3× faster than with the
    # per-datetime tzinfo pydantic-core parses (0.2 µs per row; the same instant).
    received_at = batch.received_at.astimezone(UTC)
    return batch.domain, batch.source_id, batch.cls.value, batch.transport.value, received_at


def point_row(
    batch: ClassifiedBatch, point: ClassifiedPoint, shared: BatchFields | None = None
) -> Row:
    """The ``data_points`` row of one point (metadata and legacy ids as JSON text)."""
    domain, source_id, cls, transport, received_at = shared or batch_fields(batch)
    metadata = orjson.dumps(point.metadata).decode() if point.metadata else _EMPTY_JSON
    legacy = (
        orjson.dumps(point.legacy.model_dump(exclude_none=True)).decode()
        if point.legacy is not None
        else None
    )
    return (
        point.ts, domain, source_id, point.stream_id, point.value, cls,
        point.reason, point.stream_type, point.sequence, metadata, transport,
        received_at, point.rule, point.config_version, legacy,
    )


def batch_rows(batch: ClassifiedBatch) -> tuple[list[Row], list[int], list[tuple[int, Exception]]]:
    """Rows of a batch's points, the point index of each row, and (point index, error) for
    points no row can be built of (orjson refuses e.g. a lone surrogate in metadata)."""
    shared = batch_fields(batch)
    try:
        rows = [point_row(batch, point, shared) for point in batch.points]
    except (TypeError, ValueError):
        pass  # rare: redo point by point to find which
    else:
        return rows, list(range(len(rows))), []
    rows, row_points = [], []
    unbuildable: list[tuple[int, Exception]] = []
    for index, point in enumerate(batch.points):
        try:
            rows.append(point_row(batch, point, shared))
            row_points.append(index)
        except (TypeError, ValueError) as exc:
            unbuildable.append((index, exc))
    return rows, row_points, unbuildable


async def prepare_connection(conn: asyncpg.Connection) -> None:
    """Pool ``init``: create this connection's staging table (lives as long as the session)."""
    await conn.execute(_STAGING_DDL)


async def keep_session(_conn: asyncpg.Connection) -> None:
    """Pool ``reset``: nothing to reset. asyncpg's default (``RESET ALL``, ``UNLISTEN *``,
    ``pg_advisory_unlock_all()``…) is one more round trip per fetch (≈ 20 % of the writer's CPU
    and 25 % of its backend's per small fetch); the writer sets no session state, its one
    advisory lock (``partitions.ensure_partitions``) is released in a ``finally``, and asyncpg
    still rolls back a transaction left open before this runs."""


class RowStore(Protocol):
    """Where the classified writer stores rows: a ``PointStore``, or one guarded by the circuit
    breaker (``breaker.GuardedStore``)."""

    async def write_rows(self, rows: Sequence[Row]) -> int: ...


class PointStore:
    """Writes rows into ``data_points`` (pool connections must have run ``prepare_connection``)."""

    def __init__(self, pool: asyncpg.Pool, timeout: float = 20.0) -> None:
        self._pool = pool
        self._timeout = timeout

    async def write_rows(self, rows: Sequence[Row]) -> int:
        """Store ``rows`` all at once; returns how many were new (duplicates skipped)."""
        if not rows:
            return 0
        async with self._pool.acquire(timeout=self._timeout) as conn:
            try:  # one statement: atomic on its own, no BEGIN/COMMIT round trips
                await conn.copy_records_to_table(
                    "data_points", records=rows, columns=COLUMNS, timeout=self._timeout
                )
                return len(rows)
            except asyncpg.UniqueViolationError:
                pass  # some rows are stored already: let ON CONFLICT skip them
            async with conn.transaction():
                await conn.copy_records_to_table(
                    STAGING_TABLE, records=rows, columns=COLUMNS, timeout=self._timeout
                )
                status = await conn.execute(_INSERT, timeout=self._timeout)
        return int(status.rsplit(" ", 1)[-1])  # "INSERT 0 <n>"

    async def write_batches(self, batches: Iterable[ClassifiedBatch]) -> int:
        """Store every point of ``batches`` in one transaction; returns the number inserted."""
        rows: list[Row] = []
        for batch in batches:
            rows.extend(point_row(batch, point) for point in batch.points)
        return await self.write_rows(rows)
