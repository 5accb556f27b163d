"""Reads of the legacy IoT tables writer-sqlserver fills (``dbo.sensor_readings``, ``dbo.alerts``,
``dbo.ml_events``), for the answers that must come from the database owning domain ``iot`` when
``SINK_ROUTES`` gives it to SQL Server: a sensor's status and a device's recent readings.

Blocking (SQLAlchemy Core; run them in a thread). The statements are dialect-neutral Core, so
they compile to T-SQL on SQL Server (``TOP``) and run unchanged on the PostgreSQL stand-in.
The rows come back in the shapes of the PostgreSQL reads (``time``, ``value``, ``cls``,
``reason``; alerts with ``severity``, ``rule``, …) so one reply builder serves both databases.
A reading's class is not stored in ``sensor_readings``: it is ``critical`` when an alert was
triggered by it, else ``normal``. Delta spikes (WARNING) are not in ``sensor_readings`` at all —
the legacy flow writes them to ``dbo.ml_events`` only — so they are read from there (class
``anomaly``) and merged in by time.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import column, select, table
from sqlalchemy.engine import Engine

ACTIVE = "active"
DELTA_SPIKE = "DELTA_SPIKE"

sensor_readings = table(
    "sensor_readings",
    column("sensor_id"),
    column("value"),
    column("device_timestamp"),
    schema="dbo",
)
alerts = table(
    "alerts",
    column("id"),
    column("sensor_id"),
    column("severity"),
    column("status"),
    column("message"),
    column("triggered_value"),
    column("triggered_at"),
    column("created_at"),
    schema="dbo",
)
ml_events = table(
    "ml_events",
    column("id"),
    column("sensor_id"),
    column("event_type"),
    column("severity"),
    column("status"),
    column("message"),
    column("value"),
    column("event_timestamp"),
    column("created_at"),
    schema="dbo",
)


def _utc(ts: datetime | None) -> datetime | None:
    if ts is None:
        return None
    return ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)


def _open_event(conn: Any, sensor_id: int) -> dict[str, Any] | None:
    """The sensor's active alert, else its active DELTA_SPIKE event, as a ``stream_alerts``-like
    row (``severity`` critical / anomaly, ``rule`` physical_range / delta_spike)."""
    alert = conn.execute(
        select(alerts)
        .where(alerts.c.sensor_id == sensor_id, alerts.c.status == ACTIVE)
        .order_by(alerts.c.triggered_at.desc())
        .limit(1)
    ).first()
    if alert is not None:
        a = alert._mapping
        at = _utc(a["triggered_at"])
        return {
            "alert_id": f"alerts:{a['id']}", "severity": "critical", "rule": "physical_range",
            "reason": a["message"], "first_value": a["triggered_value"], "first_at": at,
            "last_value": a["triggered_value"], "last_at": at, "peak_value": a["triggered_value"],
            "violation_count": 1, "opened_at": at,
        }  # fmt: skip
    event = conn.execute(
        select(ml_events)
        .where(
            ml_events.c.sensor_id == sensor_id,
            ml_events.c.event_type == DELTA_SPIKE,
            ml_events.c.status == ACTIVE,
        )
        .order_by(ml_events.c.event_timestamp.desc())
        .limit(1)
    ).first()
    if event is None:
        return None
    e = event._mapping
    at = _utc(e["event_timestamp"])
    return {
        "alert_id": f"ml_events:{e['id']}", "severity": "anomaly", "rule": "delta_spike",
        "reason": e["message"], "first_value": e["value"], "first_at": at,
        "last_value": e["value"], "last_at": at, "peak_value": e["value"],
        "violation_count": 1, "opened_at": at,
    }  # fmt: skip


def _classes(
    conn: Any, sensor_ids: list[int], since: datetime
) -> dict[tuple[int, datetime], tuple[str, str]]:
    """(sensor, time) → (cls, reason) of readings since ``since`` that triggered an alert."""
    found: dict[tuple[int, datetime], tuple[str, str]] = {}
    naive = since.astimezone(UTC).replace(tzinfo=None)
    for row in conn.execute(
        select(alerts.c.sensor_id, alerts.c.triggered_at, alerts.c.message).where(
            alerts.c.sensor_id.in_(sensor_ids), alerts.c.triggered_at >= naive
        )
    ):
        at = _utc(row[1])
        assert at is not None
        found[(row[0], at)] = ("critical", row[2])
    return found


def sensor_status(engine: Engine, sensor_id: int) -> tuple[dict[str, Any] | None, Any]:
    """``(latest reading, open alert)`` of one sensor, each None when there is none."""
    with engine.connect() as conn:
        readings = _readings(conn, [sensor_id], 1)
        return (readings[0] if readings else None), _open_event(conn, sensor_id)


def recent_readings(engine: Engine, sensor_ids: list[int], limit: int) -> list[dict[str, Any]]:
    """The latest ``limit`` readings of these sensors, newest first, with their classes."""
    if not sensor_ids:
        return []
    with engine.connect() as conn:
        return _readings(conn, sensor_ids, limit)


def _readings(conn: Any, sensor_ids: list[int], limit: int) -> list[dict[str, Any]]:
    stored = conn.execute(
        select(
            sensor_readings.c.sensor_id,
            sensor_readings.c.value,
            sensor_readings.c.device_timestamp,
        )
        .where(sensor_readings.c.sensor_id.in_(sensor_ids))
        .order_by(sensor_readings.c.device_timestamp.desc(), sensor_readings.c.sensor_id)
        .limit(limit)
    ).all()
    spikes = conn.execute(
        select(ml_events.c.sensor_id, ml_events.c.value, ml_events.c.event_timestamp,
               ml_events.c.message)
        .where(ml_events.c.sensor_id.in_(sensor_ids), ml_events.c.event_type == DELTA_SPIKE)
        .order_by(ml_events.c.event_timestamp.desc(), ml_events.c.sensor_id)
        .limit(limit)
    ).all()  # fmt: skip
    oldest = _utc(stored[-1][2]) if stored else None
    alerted = _classes(conn, sensor_ids, oldest) if oldest is not None else {}
    out = []
    for sensor_id, value, ts in stored:
        at = _utc(ts)
        assert at is not None
        cls, reason = alerted.get((sensor_id, at), ("normal", None))
        out.append(
            {"stream_id": str(sensor_id), "value": value, "time": at, "cls": cls, "reason": reason}
        )
    for sensor_id, value, ts, message in spikes:
        out.append(
            {"stream_id": str(sensor_id), "value": value, "time": _utc(ts), "cls": "anomaly",
             "reason": message}
        )  # fmt: skip
    out.sort(key=lambda r: (r["time"], -int(r["stream_id"])), reverse=True)
    return out[:limit]
