"""Classified points → rows of the legacy tables, in one transaction per fetch.

Where each class goes (the legacy ReadingRouter's table, issue #7):

| class    | rows |
|---|---|
| normal   | ``dbo.sensor_readings`` + upsert ``dbo.sensor_readings_latest`` |
| warning  | as normal (the legacy schema has no operational-warning table; the value is real) |
| critical | ``dbo.sensor_readings`` + ``dbo.alerts`` (one active per sensor: close, then open) |
| anomaly  | ``dbo.ml_events`` (``DELTA_SPIKE``, one active per sensor: close, then open) |
| rejected | nothing: refused before the database (DLQ), the legacy schema has no place for it |

Every statement is plain SQLAlchemy Core, so the same code runs on SQL Server (pyodbc, batches
with ``fast_executemany``) and on the PostgreSQL stand-in the tests use. Idempotency on
``(sensor_id, device_timestamp)``: readings insert ``WHERE NOT EXISTS``; latest values, alerts
and events are decided in Python after reading the sensors' current rows under
``UPDLOCK, HOLDLOCK`` (SQL Server), so a redelivered batch changes nothing. Alerts and events open
in event-time order: a point older than the sensor's newest alert/event opens none (it is still
stored as a reading).

``MSSQL_WRITE_MODE=procedure`` calls the legacy ``dbo.sp_insert_reading_and_check_threshold``
once per reading instead (``deploy/sqlserver/002_sp_insert_reading_and_check_threshold.sql``
states its contract); the procedure then owns classification side effects and idempotency.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from sqlalchemy import (
    Float,
    Integer,
    bindparam,
    cast,
    func,
    insert,
    select,
    text,
    update,
)
from sqlalchemy.engine import Connection, Engine
from sqlalchemy.sql.elements import TextClause

from tributary_contracts import ClassifiedBatch, ClassifiedPoint, PointClass
from writer_sqlserver.schema import (
    ACTIVE,
    DELTA_SPIKE,
    MESSAGE_CHARS,
    RESOLVED,
    UtcDateTime,
    alerts,
    ml_events,
    sensor_readings,
    sensor_readings_latest,
)

LOCK_HINT = "WITH (UPDLOCK, HOLDLOCK)"
"""SQL Server table hint on the reads that decide a write: concurrent writers wait instead of
racing (rendered for the mssql dialect only)."""
IN_CHUNK = 1000
"""Most ids in one ``IN (…)`` list (SQL Server accepts at most 2100 parameters)."""
INT_MIN, INT_MAX = -(2**31), 2**31 - 1
PROCEDURE = "dbo.sp_insert_reading_and_check_threshold"
WriteMode = Literal["tables", "procedure"]


_INTEGER = re.compile(r"^-?[0-9]{1,19}$")


class UnmappablePoint(ValueError):
    """A point that cannot become a legacy row (no sensor id, rejected class): permanent."""


@dataclass(frozen=True)
class Reading:
    """One point as the legacy tables see it (times naive UTC)."""

    sensor_id: int
    value: float
    ts: datetime
    cls: PointClass
    reason: str
    received_at: datetime


def naive_utc(moment: datetime) -> datetime:
    return moment.astimezone(UTC).replace(tzinfo=None)


def sensor_id_of(point: ClassifiedPoint) -> int:
    """``legacy.sensor_id``, else the stream id when it is an integer (the contract stores
    legacy points with ``stream_id`` = sensor id as text); must fit SQL Server's INT."""
    sensor_id = point.legacy.sensor_id if point.legacy is not None else None
    if sensor_id is None:
        text_id = point.stream_id.strip()
        if not _INTEGER.match(text_id):
            raise UnmappablePoint(
                f"point has no legacy.sensor_id and stream_id {point.stream_id!r} is not an "
                "integer sensor id"
            )
        sensor_id = int(text_id)
    if not INT_MIN <= sensor_id <= INT_MAX:
        raise UnmappablePoint(f"sensor_id {sensor_id} does not fit the legacy INT column")
    return sensor_id


def batch_readings(
    batch: ClassifiedBatch,
) -> tuple[list[Reading], list[int], list[tuple[int, Exception]]]:
    """Readings of ``batch``, the point index of each, and the points that cannot be one."""
    readings: list[Reading] = []
    indexes: list[int] = []
    refused: list[tuple[int, Exception]] = []
    received_at = naive_utc(batch.received_at)
    for index, point in enumerate(batch.points):
        try:
            if batch.cls is PointClass.REJECTED:
                raise UnmappablePoint(
                    "class 'rejected' has no table in the legacy schema: "
                    f"the classifier refused the point ({point.reason})"
                )
            readings.append(Reading(sensor_id_of(point), point.value, naive_utc(point.ts),
                                    batch.cls, point.reason, received_at))
            indexes.append(index)
        except UnmappablePoint as exc:
            refused.append((index, exc))
    return readings, indexes, refused


# --- statements ------------------------------------------------------------------------------

def _param(name: str, type_: Any) -> Any:
    # Typed CASTs: SQL Server cannot infer the type of a bare parameter in a SELECT list.
    return cast(bindparam(name, type_=type_), type_)


sr = sensor_readings
INSERT_READING = insert(sr).from_select(
    ["sensor_id", "value", "device_timestamp", "ingest_timestamp"],
    select(
        _param("sensor_id", Integer), _param("value", Float(53)),
        _param("device_timestamp", UtcDateTime), _param("ingest_timestamp", UtcDateTime),
    ).where(
        ~select(sr.c.id)
        .where(sr.c.sensor_id == bindparam("sensor_id", type_=Integer),
               sr.c.device_timestamp == bindparam("device_timestamp", type_=UtcDateTime))
        .with_hint(sr, LOCK_HINT, "mssql")
        .exists()
    ),
)
"""One reading, unless ``(sensor_id, device_timestamp)`` is already stored."""

lt = sensor_readings_latest
SELECT_LATEST = (
    select(lt.c.sensor_id, lt.c.device_timestamp)
    .where(lt.c.sensor_id.in_(bindparam("sensor_ids", expanding=True)))
    .with_hint(lt, LOCK_HINT, "mssql")
)
UPDATE_LATEST = (
    update(lt)
    .where(lt.c.sensor_id == bindparam("k_sensor_id"))
    .values(value=bindparam("k_value"), device_timestamp=bindparam("k_ts"),
            updated_at=bindparam("k_now"))
)


def _insert(table: Any, *columns: str) -> Any:
    """INSERT of exactly ``columns`` (named parameters: one statement for executemany)."""
    return insert(table).values({c: bindparam(c, type_=table.c[c].type) for c in columns})


INSERT_LATEST = _insert(lt, "sensor_id", "value", "device_timestamp", "updated_at")

NEWEST_ALERT = (
    select(alerts.c.sensor_id, func.max(alerts.c.triggered_at))
    .where(alerts.c.sensor_id.in_(bindparam("sensor_ids", expanding=True)))
    .group_by(alerts.c.sensor_id)
    .with_hint(alerts, LOCK_HINT, "mssql")
)
CLOSE_ALERT = (
    update(alerts)
    .where(alerts.c.sensor_id == bindparam("k_sensor_id"), alerts.c.status == ACTIVE)
    .values(status=RESOLVED, resolved_at=bindparam("k_resolved_at"))
)
INSERT_ALERT = _insert(
    alerts, "sensor_id", "severity", "status", "message", "triggered_value", "triggered_at",
    "resolved_at", "created_at",
)

NEWEST_EVENT = (
    select(ml_events.c.sensor_id, func.max(ml_events.c.event_timestamp))
    .where(ml_events.c.sensor_id.in_(bindparam("sensor_ids", expanding=True)),
           ml_events.c.event_type == DELTA_SPIKE)
    .group_by(ml_events.c.sensor_id)
    .with_hint(ml_events, LOCK_HINT, "mssql")
)
CLOSE_EVENT = (
    update(ml_events)
    .where(ml_events.c.sensor_id == bindparam("k_sensor_id"),
           ml_events.c.event_type == DELTA_SPIKE, ml_events.c.status == ACTIVE)
    .values(status=RESOLVED, resolved_at=bindparam("k_resolved_at"))
)
INSERT_EVENT = _insert(
    ml_events, "sensor_id", "event_type", "severity", "status", "message", "value",
    "event_timestamp", "resolved_at", "created_at",
)

PROCEDURE_CALLS: dict[str, str] = {
    "mssql": (f"EXEC {PROCEDURE} @sensor_id = :sensor_id, @value = :value, "
              "@device_timestamp = :device_timestamp"),
    "postgresql": f"CALL {PROCEDURE}(:sensor_id, :value, :device_timestamp)",
}
"""How each dialect calls the legacy procedure (PostgreSQL: the tests' stand-in procedure)."""


def procedure_call(dialect_name: str) -> TextClause:
    return text(PROCEDURE_CALLS[dialect_name]).bindparams(
        bindparam("sensor_id", type_=Integer), bindparam("value", type_=Float(53)),
        bindparam("device_timestamp", type_=UtcDateTime),
    )


# --- planning (pure: unit tested) ---------------------------------------------------------------

@dataclass(frozen=True)
class PlannedEvent:
    """An alert or event row to insert: active unless a newer one of the batch resolves it."""

    reading: Reading
    resolved_at: datetime | None

    @property
    def status(self) -> str:
        return ACTIVE if self.resolved_at is None else RESOLVED


def unique_readings(readings: Iterable[Reading]) -> list[Reading]:
    """First reading of each ``(sensor_id, ts)``, in input order."""
    seen: dict[tuple[int, datetime], Reading] = {}
    for r in readings:
        seen.setdefault((r.sensor_id, r.ts), r)
    return list(seen.values())


def plan_events(
    readings: Iterable[Reading], newest: dict[int, datetime]
) -> tuple[list[tuple[int, datetime]], list[PlannedEvent]]:
    """Close-before-open for one log (alerts or events), given each sensor's newest stored time.

    Returns the sensors whose active row must close (and when: the first new point's time) and
    the rows to insert, oldest first: each resolved by the next one, the newest left active.
    Points not newer than what is stored change nothing (redelivery, late arrival).
    """
    by_sensor: dict[int, dict[datetime, Reading]] = {}
    for r in readings:
        by_sensor.setdefault(r.sensor_id, {}).setdefault(r.ts, r)
    closes: list[tuple[int, datetime]] = []
    inserts: list[PlannedEvent] = []
    for sensor_id, by_ts in by_sensor.items():
        floor = newest.get(sensor_id)
        fresh = sorted(ts for ts in by_ts if floor is None or ts > floor)
        if not fresh:
            continue
        if floor is not None:
            closes.append((sensor_id, fresh[0]))
        for i, ts in enumerate(fresh):
            inserts.append(PlannedEvent(by_ts[ts], fresh[i + 1] if i + 1 < len(fresh) else None))
    return closes, inserts


def plan_latest(
    readings: Iterable[Reading], current: dict[int, datetime]
) -> tuple[list[Reading], list[Reading]]:
    """(updates, inserts) of ``sensor_readings_latest``: each sensor's newest reading, when it
    is newer than the stored one (update) or the sensor has none (insert)."""
    newest: dict[int, Reading] = {}
    for r in readings:
        held = newest.get(r.sensor_id)
        if held is None or r.ts > held.ts:
            newest[r.sensor_id] = r
    updates, inserts = [], []
    for sensor_id, r in newest.items():
        stored = current.get(sensor_id)
        if stored is None:
            inserts.append(r)
        elif r.ts > stored:
            updates.append(r)
    return updates, inserts


# --- the store ---------------------------------------------------------------------------------

@dataclass
class WriteCounts:
    """What one transaction sent (readings: attempted; the rest: decided rows)."""

    readings: int = 0
    latest: int = 0
    alerts: int = 0
    events: int = 0
    procedure_calls: int = 0


def _chunks(ids: Sequence[int]) -> Iterator[list[int]]:
    for start in range(0, len(ids), IN_CHUNK):
        yield list(ids[start:start + IN_CHUNK])


def _newest(conn: Connection, stmt: Any, sensor_ids: Iterable[int]) -> dict[int, datetime]:
    found: dict[int, datetime] = {}
    for chunk in _chunks(sorted(set(sensor_ids))):
        for sensor_id, moment in conn.execute(stmt, {"sensor_ids": chunk}):
            if moment is not None:
                found[int(sensor_id)] = moment
    return found


def _message(reason: str) -> str:
    """``reason`` cut to fit NVARCHAR(500), which counts UTF-16 code units, not characters."""
    units = reason.encode("utf-16-le")
    if len(units) <= 2 * MESSAGE_CHARS:
        return reason
    return units[: 2 * MESSAGE_CHARS].decode("utf-16-le", errors="ignore")


class LegacyStore:
    """Writes readings into the legacy tables (or through the legacy procedure). Synchronous:
    the writer runs it in a worker thread. Every ``write`` is one transaction."""

    def __init__(
        self, engine: Engine, mode: WriteMode = "tables",
        clock: Callable[[], datetime] = lambda: naive_utc(datetime.now(UTC)),
    ) -> None:
        self.engine = engine
        self.mode = mode
        self.clock = clock
        self._procedure = (
            procedure_call(engine.dialect.name) if mode == "procedure" else None
        )

    def write(self, readings: Sequence[Reading]) -> WriteCounts:
        """Write ``readings`` in one transaction; raises the database's error (rolled back)."""
        counts = WriteCounts()
        if not readings:
            return counts
        with self.engine.begin() as conn:
            if self._procedure is not None:
                self._call_procedure(conn, readings, counts)
            else:
                self._write_tables(conn, readings, counts)
        return counts

    def _call_procedure(
        self, conn: Connection, readings: Sequence[Reading], counts: WriteCounts
    ) -> None:
        assert self._procedure is not None
        ordered = sorted(unique_readings(readings), key=lambda r: (r.ts, r.sensor_id))
        conn.execute(self._procedure, [
            {"sensor_id": r.sensor_id, "value": r.value, "device_timestamp": r.ts}
            for r in ordered
        ])
        counts.procedure_calls = len(ordered)

    def _write_tables(
        self, conn: Connection, readings: Sequence[Reading], counts: WriteCounts
    ) -> None:
        now = self.clock()
        unique = unique_readings(readings)
        stored = [r for r in unique if r.cls is not PointClass.ANOMALY]
        latest = [r for r in stored if r.cls in (PointClass.NORMAL, PointClass.WARNING)]
        critical = [r for r in stored if r.cls is PointClass.CRITICAL]
        anomalies = [r for r in unique if r.cls is PointClass.ANOMALY]
        if stored:
            conn.execute(INSERT_READING, [
                {"sensor_id": r.sensor_id, "value": r.value, "device_timestamp": r.ts,
                 "ingest_timestamp": r.received_at}
                for r in stored
            ])
            counts.readings = len(stored)
        if latest:
            counts.latest = self._upsert_latest(conn, latest, now)
        if critical:
            counts.alerts = self._open_alerts(conn, critical, now)
        if anomalies:
            counts.events = self._open_events(conn, anomalies, now)

    def _upsert_latest(self, conn: Connection, readings: list[Reading], now: datetime) -> int:
        current = _newest(conn, SELECT_LATEST, (r.sensor_id for r in readings))
        updates, inserts = plan_latest(readings, current)
        if updates:
            conn.execute(UPDATE_LATEST, [
                {"k_sensor_id": r.sensor_id, "k_value": r.value, "k_ts": r.ts, "k_now": now}
                for r in updates
            ])
        if inserts:
            conn.execute(INSERT_LATEST, [
                {"sensor_id": r.sensor_id, "value": r.value, "device_timestamp": r.ts,
                 "updated_at": now}
                for r in inserts
            ])
        return len(updates) + len(inserts)

    def _open_alerts(self, conn: Connection, readings: list[Reading], now: datetime) -> int:
        newest = _newest(conn, NEWEST_ALERT, (r.sensor_id for r in readings))
        closes, inserts = plan_events(readings, newest)
        if closes:
            conn.execute(CLOSE_ALERT, [
                {"k_sensor_id": sensor_id, "k_resolved_at": at} for sensor_id, at in closes
            ])
        if inserts:
            conn.execute(INSERT_ALERT, [
                {"sensor_id": e.reading.sensor_id, "severity": "critical", "status": e.status,
                 "message": _message(e.reading.reason), "triggered_value": e.reading.value,
                 "triggered_at": e.reading.ts, "resolved_at": e.resolved_at, "created_at": now}
                for e in inserts
            ])
        return len(inserts)

    def _open_events(self, conn: Connection, readings: list[Reading], now: datetime) -> int:
        newest = _newest(conn, NEWEST_EVENT, (r.sensor_id for r in readings))
        closes, inserts = plan_events(readings, newest)
        if closes:
            conn.execute(CLOSE_EVENT, [
                {"k_sensor_id": sensor_id, "k_resolved_at": at} for sensor_id, at in closes
            ])
        if inserts:
            conn.execute(INSERT_EVENT, [
                {"sensor_id": e.reading.sensor_id, "event_type": DELTA_SPIKE,
                 "severity": "warning", "status": e.status,
                 "message": _message(e.reading.reason), "value": e.reading.value,
                 "event_timestamp": e.reading.ts, "resolved_at": e.resolved_at,
                 "created_at": now}
                for e in inserts
            ])
        return len(inserts)
