"""The read side's SQL: points (paged or downsampled), streams, alerts, predictions, rejects.

Every query runs on the read-only role (``POSTGRES_READ_DSN``) in read-only sessions, is bounded
(LIMIT, time range) and filtered by the key's ``ReadScope``. Lists are paged by keyset: a reply's
``next`` cursor (opaque text) is passed back as ``cursor`` and continues after its last row.
Tables that writer-postgres has not created yet read as empty.
"""

from __future__ import annotations

import asyncio
import base64
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import asyncpg
import orjson
import structlog

from console.scope import ReadScope, clause
from tributary_contracts import PointClass

log = structlog.get_logger("console.queries")

CLASS_RANK = {
    PointClass.NORMAL.value: 0,
    PointClass.REJECTED.value: 1,
    PointClass.WARNING.value: 2,
    PointClass.ANOMALY.value: 3,
    PointClass.CRITICAL.value: 4,
}
"""Which class wins when a downsampled bucket mixes several (the worst one shows)."""
RANKED = {rank: cls for cls, rank in CLASS_RANK.items()}
_RANK_SQL = "CASE cls " + " ".join(f"WHEN '{c}' THEN {r}" for c, r in CLASS_RANK.items()) + " END"


class ReadUnavailable(Exception):
    """PostgreSQL did not answer (down, role missing, timeout): the reply is 503."""


class BadQuery(ValueError):
    """A query parameter that cannot be used (the reply is 422 naming ``field``)."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field}: {message}")
        self.field = field
        self.message = message


def encode_cursor(values: Sequence[Any]) -> str:
    return base64.urlsafe_b64encode(orjson.dumps(list(values))).decode().rstrip("=")


def decode_cursor(text: str, types: Sequence[type]) -> list[Any]:
    """The values of a cursor made by ``encode_cursor``, of ``types`` (datetime from ISO)."""
    try:
        values = orjson.loads(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)))
        if not isinstance(values, list) or len(values) != len(types):
            raise ValueError
        out: list[Any] = []
        for value, kind in zip(values, types, strict=True):
            if kind is datetime:
                out.append(datetime.fromisoformat(value))
            elif not isinstance(value, kind):
                raise ValueError
            else:
                out.append(value)
        return out
    except (ValueError, TypeError, orjson.JSONDecodeError, base64.binascii.Error):  # type: ignore[attr-defined]
        raise BadQuery("cursor", "is not a cursor this API returned") from None


def jsonable(record: asyncpg.Record | dict[str, Any]) -> dict[str, Any]:
    """A row as JSON-ready values (timestamps as ISO 8601 UTC with ``Z``)."""
    out = {}
    for key, value in dict(record).items():
        if isinstance(value, datetime):
            value = value.astimezone(UTC).isoformat().replace("+00:00", "Z")
        out[key] = value
    return out


async def _init_connection(conn: asyncpg.Connection) -> None:
    for kind in ("json", "jsonb"):
        await conn.set_type_codec(
            kind,
            encoder=lambda v: orjson.dumps(v).decode(),
            decoder=orjson.loads,
            schema="pg_catalog",
        )


class Reader:
    """A lazily opened pool on the read-only DSN; every call bounded by ``timeout``."""

    def __init__(self, dsn: str, timeout: float) -> None:
        self._dsn = dsn
        self._timeout = timeout
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def _connect(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._dsn,
                    min_size=0,
                    max_size=4,
                    timeout=self._timeout,
                    command_timeout=self._timeout,
                    init=_init_connection,
                    server_settings={
                        "default_transaction_read_only": "on",
                        "application_name": "tributary-console",
                    },
                )
            return self._pool

    async def fetch(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        try:
            pool = await self._connect()
            async with pool.acquire() as conn:
                return list(await conn.fetch(sql, *args))
        except asyncpg.UndefinedTableError:
            return []  # writer-postgres has not created its tables yet: nothing stored
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise ReadUnavailable(f"{type(exc).__name__}: {str(exc)[:200]}") from None

    async def ready(self) -> bool:
        try:
            await self.fetch("SELECT 1")
            return True
        except ReadUnavailable:
            return False

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


@dataclass(frozen=True)
class StreamKey:
    domain: str
    source_id: str
    stream_id: str


@dataclass(frozen=True)
class TimeRange:
    start: datetime
    end: datetime

    @property
    def seconds(self) -> float:
        return (self.end - self.start).total_seconds()


def classes_param(values: Sequence[str]) -> list[str] | None:
    """The ``cls`` filter: known classes only (422 otherwise); empty → any."""
    for value in values:
        if value not in CLASS_RANK:
            raise BadQuery("cls", f"{value[:32]!r} is not a class ({', '.join(CLASS_RANK)})")
    return list(values) or None


POINT_COLUMNS = (
    "time, value, cls, reason, rule, config_version, stream_type, transport, received_at, metadata"
)


async def points(
    reader: Reader,
    key: StreamKey,
    span: TimeRange,
    classes: list[str] | None,
    limit: int,
    cursor: str | None,
    *,
    newest_first: bool = False,
) -> tuple[list[dict[str, Any]], str | None]:
    """Points of one stream in ``span`` by time (``newest_first``: backwards), at most
    ``limit``; the cursor of the next page (None on the last one)."""
    after = decode_cursor(cursor, [datetime])[0] if cursor else None
    order, beyond = ("DESC", "<") if newest_first else ("ASC", ">")
    rows = await reader.fetch(
        f"SELECT {POINT_COLUMNS} FROM data_points"
        " WHERE domain = $1 AND source_id = $2 AND stream_id = $3 AND time >= $4 AND time < $5"
        " AND ($6::text[] IS NULL OR cls = ANY($6::text[]))"
        f" AND ($7::timestamptz IS NULL OR time {beyond} $7)"
        f" ORDER BY time {order} LIMIT $8",
        key.domain,
        key.source_id,
        key.stream_id,
        span.start,
        span.end,
        classes,
        after,
        limit + 1,
    )
    page = [jsonable(r) for r in rows[:limit]]
    next_cursor = encode_cursor([page[-1]["time"]]) if len(rows) > limit else None
    return page, next_cursor


def bucket_seconds(span: TimeRange, buckets: int) -> float:
    """The bucket width that cuts ``span`` into at most ``buckets`` (whole milliseconds)."""
    return max(math.ceil(span.seconds * 1000 / buckets) / 1000, 0.001)


async def downsampled(
    reader: Reader, key: StreamKey, span: TimeRange, classes: list[str] | None, every: float
) -> list[dict[str, Any]]:
    """One row per ``every``-second bucket that has points: its start, count, min, max, mean
    and the worst class among its points (``CLASS_RANK``)."""
    rows = await reader.fetch(
        "SELECT date_bin(make_interval(secs => $6), time, TIMESTAMPTZ 'epoch') AS time,"
        f" count(*) AS count, min(value) AS min, max(value) AS max, avg(value) AS mean,"
        f" max({_RANK_SQL}) AS worst FROM data_points"
        " WHERE domain = $1 AND source_id = $2 AND stream_id = $3 AND time >= $4 AND time < $5"
        " AND ($7::text[] IS NULL OR cls = ANY($7::text[]))"
        " GROUP BY 1 ORDER BY 1",
        key.domain,
        key.source_id,
        key.stream_id,
        span.start,
        span.end,
        every,
        classes,
    )
    out = []
    for row in rows:
        item = jsonable(row)
        item["cls"] = RANKED.get(item.pop("worst"), PointClass.NORMAL.value)
        out.append(item)
    return out


async def streams(
    reader: Reader, scope: ReadScope, since: datetime, limit: int
) -> list[dict[str, Any]]:
    """Streams with points at or after ``since``, latest first, with their point count since
    then and their latest point (one aggregate pass over the range, then one index lookup per
    listed stream)."""
    rows = await reader.fetch(
        "WITH recent AS ("
        " SELECT domain, source_id, stream_id, count(*) AS points, max(time) AS last_time"
        f" FROM data_points WHERE time >= $1 AND {clause(2)}"
        " GROUP BY domain, source_id, stream_id ORDER BY last_time DESC LIMIT $4)"
        " SELECT r.domain, r.source_id, r.stream_id, r.last_time, p.value AS last_value,"
        " p.cls AS last_cls, r.points FROM recent r CROSS JOIN LATERAL ("
        " SELECT value, cls FROM data_points d WHERE d.domain = r.domain"
        " AND d.source_id = r.source_id AND d.stream_id = r.stream_id AND d.time = r.last_time"
        " LIMIT 1) p ORDER BY r.last_time DESC",
        since,
        *scope.params(),
        limit,
    )
    return [jsonable(r) for r in rows]


ALERT_COLUMNS = (
    "alert_id, domain, source_id, stream_id, severity, status, rule, reason, config_version, "
    "opened_at, closed_at, first_value, first_at, last_value, last_at, peak_value, "
    "violation_count, last_event, updated_at"
)


async def alerts(
    reader: Reader,
    scope: ReadScope,
    *,
    status: str | None,
    key: StreamKey | None,
    span: TimeRange | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Alerts (``status`` open/closed or both), latest opened first; of one stream when ``key``
    is given, opened in ``span`` when given."""
    before = decode_cursor(cursor, [datetime, str]) if cursor else [None, None]
    rows = await reader.fetch(
        f"SELECT {ALERT_COLUMNS} FROM stream_alerts WHERE {clause(1)}"
        " AND ($3::text IS NULL OR status = $3)"
        " AND ($4::text IS NULL OR (domain = $4 AND source_id = $5 AND stream_id = $6))"
        " AND ($7::timestamptz IS NULL OR opened_at < $8 AND coalesce(closed_at, 'infinity') >= $7)"
        " AND ($9::timestamptz IS NULL OR (opened_at, alert_id) < ($9, $10))"
        " ORDER BY opened_at DESC, alert_id DESC LIMIT $11",
        *scope.params(),
        status,
        key.domain if key else None,
        key.source_id if key else None,
        key.stream_id if key else None,
        span.start if span else None,
        span.end if span else None,
        before[0],
        before[1],
        limit + 1,
    )
    page = [jsonable(r) for r in rows[:limit]]
    last = rows[limit - 1] if len(rows) > limit else None
    next_cursor = encode_cursor([jsonable(last)["opened_at"], last["alert_id"]]) if last else None
    return page, next_cursor


PREDICTION_COLUMNS = (
    "domain, source_id, stream_id, model, as_of, time, predicted_value, lower_bound, "
    "upper_bound, anomaly_score, is_anomaly, horizon_seconds, step_seconds, forecast_values, "
    "threshold_events, explanation, points_used, computed_at"
)


async def predictions(
    reader: Reader, scope: ReadScope, key: StreamKey | None, limit: int, cursor: str | None
) -> tuple[list[dict[str, Any]], str | None]:
    """ml-batch's predictions, latest ``as_of`` first (of one stream when ``key`` is given)."""
    before = decode_cursor(cursor, [datetime, str, str, str, str]) if cursor else [None] * 5
    rows = await reader.fetch(
        f"SELECT {PREDICTION_COLUMNS} FROM predictions WHERE {clause(1)}"
        " AND ($3::text IS NULL OR (domain = $3 AND source_id = $4 AND stream_id = $5))"
        " AND ($6::timestamptz IS NULL OR"
        "      (as_of, domain, source_id, stream_id, model) < ($6, $7, $8, $9, $10))"
        " ORDER BY as_of DESC, domain DESC, source_id DESC, stream_id DESC, model DESC LIMIT $11",
        *scope.params(),
        key.domain if key else None,
        key.source_id if key else None,
        key.stream_id if key else None,
        *before,
        limit + 1,
    )
    page = [jsonable(r) for r in rows[:limit]]
    next_cursor = None
    if len(rows) > limit:
        last = page[-1]
        next_cursor = encode_cursor(
            [last["as_of"], last["domain"], last["source_id"], last["stream_id"], last["model"]]
        )
    return page, next_cursor


async def rejects(
    reader: Reader,
    scope: ReadScope,
    *,
    domain: str | None,
    source_id: str | None,
    transport: str | None,
    limit: int,
    cursor: str | None,
) -> tuple[list[dict[str, Any]], str | None]:
    """Input the gateways refused, latest first. A source_writer key sees only rejects that
    name a domain and source of its scope."""
    before = decode_cursor(cursor, [int])[0] if cursor else None
    rows = await reader.fetch(
        "SELECT id, time, transport, domain, source_id, stream_id, reason, payload_excerpt"
        f" FROM ingest_rejects WHERE {clause(1)}"
        " AND ($3::text IS NULL OR domain = $3) AND ($4::text IS NULL OR source_id = $4)"
        " AND ($5::text IS NULL OR transport = $5) AND ($6::bigint IS NULL OR id < $6)"
        " ORDER BY id DESC LIMIT $7",
        *scope.params(),
        domain,
        source_id,
        transport,
        before,
        limit + 1,
    )
    page = [jsonable(r) for r in rows[:limit]]
    next_cursor = encode_cursor([page[-1]["id"]]) if len(rows) > limit else None
    return page, next_cursor
