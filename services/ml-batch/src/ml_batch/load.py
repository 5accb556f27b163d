"""Loading the latest points of every stream that has new data: one query per database.

PostgreSQL: the streams with a point newer than ``now - recent`` and newer than their watermark
(``prediction_watermarks``), each with its latest N points through a LATERAL index scan of the
``data_points`` unique key (scanned backwards), aggregated into one row per stream.
SQL Server (legacy IoT schema, when ``MSSQL_DSN`` is set): the same over
``dbo.sensor_readings`` with CROSS APPLY / TOP; watermarks are applied after reading, since
they live in PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import numpy as np

from tributary_sqlserver import DEFAULT_ODBC_DRIVER, DEFAULT_TDS_VERSION, build_engine


@dataclass
class StreamWindows:
    """Latest points of S streams, as parallel lists (times relative to ``last_times``)."""

    keys: list[tuple[str, str, str]] = field(default_factory=list)  # (domain, source, stream)
    stream_types: list[str | None] = field(default_factory=list)
    last_times: list[datetime] = field(default_factory=list)
    rel_times: list[Any] = field(default_factory=list)  # seconds, oldest first, ≤ 0
    values: list[Any] = field(default_factory=list)  # (lists or 1-D float arrays)

    def __len__(self) -> int:
        return len(self.keys)

    def extend(self, other: StreamWindows) -> None:
        self.keys += other.keys
        self.stream_types += other.stream_types
        self.last_times += other.last_times
        self.rel_times += other.rel_times
        self.values += other.values


POSTGRES_QUERY = """
WITH recent AS (
    SELECT domain, source_id, stream_id, max(time) AS last_time
    FROM data_points
    WHERE time >= $1 AND NOT (domain = ANY($4::text[]))
    GROUP BY domain, source_id, stream_id
), todo AS (
    SELECT r.domain, r.source_id, r.stream_id, r.last_time
    FROM recent r
    LEFT JOIN prediction_watermarks w
      ON w.domain = r.domain AND w.source_id = r.source_id AND w.stream_id = r.stream_id
    WHERE w.last_time IS NULL OR r.last_time > w.last_time
    ORDER BY w.last_time NULLS FIRST
    LIMIT $3
)
SELECT t.domain, t.source_id, t.stream_id, t.last_time, p.stream_type, p.rel, p.vals
FROM todo t
CROSS JOIN LATERAL (
    -- Aggregated in the subquery's order (newest first; reversed by the reader): an ORDER BY
    -- inside the aggregate would sort every window a second time. Times and values travel as
    -- packed big-endian float8 (bytea), which the reader maps with numpy without a Python
    -- object per number (asyncpg's float8[] decoding was a large share of a run, measured).
    SELECT (array_agg(x.stream_type) FILTER (WHERE x.stream_type IS NOT NULL))[1] AS stream_type,
           string_agg(float8send(extract(epoch FROM x.time - t.last_time)::float8), ''::bytea)
               AS rel,
           string_agg(float8send(x.value), ''::bytea) AS vals
    FROM (
        SELECT d.time, d.value, d.stream_type
        FROM data_points d
        WHERE d.domain = t.domain AND d.source_id = t.source_id AND d.stream_id = t.stream_id
        ORDER BY d.time DESC
        LIMIT $2
    ) x
) p
"""


async def load_postgres(
    conn: asyncpg.Connection,
    *,
    since: datetime,
    window: int,
    max_streams: int,
    exclude_domains: list[str],
) -> StreamWindows:
    """Windows of the PostgreSQL streams that have points newer than their watermark."""
    out = StreamWindows()
    for row in await conn.fetch(POSTGRES_QUERY, since, window, max_streams, exclude_domains):
        out.keys.append((row["domain"], row["source_id"], row["stream_id"]))
        out.stream_types.append(row["stream_type"])
        out.last_times.append(row["last_time"])
        out.rel_times.append(np.frombuffer(row["rel"], dtype=">f8")[::-1])
        out.values.append(np.frombuffer(row["vals"], dtype=">f8")[::-1])
    return out


SQLSERVER_QUERY = """
WITH recent AS (
    SELECT TOP (:max_streams) sensor_id, MAX(device_timestamp) AS last_time
    FROM dbo.sensor_readings
    WHERE device_timestamp >= :since
    GROUP BY sensor_id
    ORDER BY MAX(device_timestamp) DESC
)
SELECT r.sensor_id, r.last_time, w.device_timestamp AS ts, CAST(w.value AS float) AS value
FROM recent r
CROSS APPLY (
    SELECT TOP (:window) s.device_timestamp, s.value
    FROM dbo.sensor_readings s
    WHERE s.sensor_id = r.sensor_id
    ORDER BY s.device_timestamp DESC
) w
ORDER BY r.sensor_id, w.device_timestamp
"""


def legacy_stream_key(domain: str, sensor_id: int) -> tuple[str, str, str]:
    """(domain, source_id, stream_id) of a legacy sensor, as the gateways name it when the
    device registry does not know the sensor (ARCHITECTURE.md: ``sensor-<id>``, id as text)."""
    return (domain, f"sensor-{sensor_id}", str(sensor_id))


def load_sqlserver(
    dsn: str,
    *,
    odbc_driver: str = DEFAULT_ODBC_DRIVER,
    tds_version: str = DEFAULT_TDS_VERSION,
    domain: str,
    since: datetime,
    window: int,
    max_streams: int,
    watermarks: dict[tuple[str, str, str], datetime],
) -> StreamWindows:
    """Windows of the legacy ``dbo.sensor_readings`` sensors with new readings (blocking: run
    it in a thread). Legacy timestamps are ``datetime2`` without zone, taken as UTC. ``dsn`` is
    read as writer-sqlserver reads MSSQL_DSN (``tributary_sqlserver``: ``mssql://`` gets its
    ODBC driver named, so pyodbc does not look the host up as a data source name, IM002)."""
    from sqlalchemy import text

    engine = build_engine(dsn, odbc_driver=odbc_driver, tds_version=tds_version, pool_size=1)
    try:
        with engine.connect() as conn:
            rows = conn.execute(
                text(SQLSERVER_QUERY),
                {
                    "since": since.astimezone(UTC).replace(tzinfo=None),
                    "window": window,
                    "max_streams": max_streams,
                },
            ).all()
    finally:
        engine.dispose()
    return group_legacy_rows(rows, domain, watermarks)


def _utc(ts: datetime) -> datetime:
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def group_legacy_rows(
    rows: Sequence[Any], domain: str, watermarks: dict[tuple[str, str, str], datetime]
) -> StreamWindows:
    """Rows (sensor_id, last_time, ts, value) ordered by sensor and time → windows, leaving
    out sensors with nothing newer than their watermark."""
    out = StreamWindows()
    current: int | None = None
    for sensor_id, last_time, ts, value in rows:
        if sensor_id != current:
            current = sensor_id
            key = legacy_stream_key(domain, int(sensor_id))
            last = _utc(last_time)
            mark = watermarks.get(key)
            skip = mark is not None and last <= mark
            if not skip:
                out.keys.append(key)
                out.stream_types.append(None)
                out.last_times.append(last)
                out.rel_times.append([])
                out.values.append([])
        if skip:
            continue
        out.rel_times[-1].append((_utc(ts) - last) / timedelta(seconds=1))
        out.values[-1].append(float(value))
    return out


async def load_watermarks(conn: asyncpg.Connection, domain: str) -> dict[Any, datetime]:
    rows = await conn.fetch(
        "SELECT domain, source_id, stream_id, last_time FROM prediction_watermarks"
        " WHERE domain = $1",
        domain,
    )
    return {(r["domain"], r["source_id"], r["stream_id"]): r["last_time"] for r in rows}
