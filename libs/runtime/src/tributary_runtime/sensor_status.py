"""``GET /sensors/{sensor_id}/status`` of the legacy IoT API, as data: which rows to read and
the reply built from them (seed 002's shape). The console serves it from its read-only
PostgreSQL role; gateway-http's legacy module answers the same route for its clients.

The latest stored reading of the sensor's stream (domain ``iot``, ``stream_id`` = the sensor id
as text, ``source_id`` = the owning device's uuid or ``sensor-<id>`` for a sensor the registry
does not know) with its class, and the open alert of that stream, read from the tables
writer-postgres fills (``data_points``, ``stream_alerts``).
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import UTC, datetime
from typing import Any

from tributary_contracts import PointClass
from tributary_runtime.devices import SensorIndexRecord

IOT_DOMAIN = "iot"
"""The domain of the legacy IoT points (the gateways' ``tributary_ingest.points.IOT_DOMAIN``)."""

LEGACY_CLASS = {
    PointClass.CRITICAL.value: "ALERT",
    PointClass.ANOMALY.value: "WARNING",
    PointClass.WARNING.value: "WARNING",
    PointClass.NORMAL.value: "ML_PREDICTION",
    PointClass.REJECTED.value: "REJECTED",
}
"""The legacy ReadingClass name of a stored class (status replies carry both)."""

LATEST_SQL = """
SELECT time, value, cls, reason, stream_type, source_id FROM data_points
 WHERE domain = $1 AND source_id = ANY($2::text[]) AND stream_id = $3
 ORDER BY time DESC LIMIT 1
"""
"""$1 domain, $2 candidate source ids, $3 stream id → the latest reading (or no row)."""
OPEN_ALERT_SQL = """
SELECT alert_id, severity, rule, reason, first_value, first_at, last_value, last_at, peak_value,
       violation_count, opened_at
  FROM stream_alerts
 WHERE domain = $1 AND source_id = ANY($2::text[]) AND stream_id = $3 AND status = 'open'
 ORDER BY opened_at DESC LIMIT 1
"""
"""Same parameters → the open alert of the stream (or no row)."""


def iso(value: datetime | None) -> str | None:
    """``2026-02-25T21:00:00Z`` (UTC, ``Z``), or None."""
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def status_body(
    sensor_id: int,
    sensor: SensorIndexRecord | None,
    latest: Mapping[str, Any] | None,
    alert: Mapping[str, Any] | None,
) -> dict[str, Any]:
    """The status reply: registry ids, the latest reading and the open alert (or nulls).

    ``state`` is the legacy class of the open alert if there is one, else of the latest
    reading (``NO_DATA`` when nothing is stored)."""
    latest_doc = None
    if latest is not None:
        latest_doc = {
            "value": latest["value"],
            "timestamp": iso(latest["time"]),
            "classification": LEGACY_CLASS.get(latest["cls"], latest["cls"]),
            "cls": latest["cls"],
            "reason": latest["reason"],
        }
    alert_doc = None
    if alert is not None:
        alert_doc = {
            "alert_id": alert["alert_id"],
            "classification": LEGACY_CLASS.get(alert["severity"], alert["severity"]),
            "severity": alert["severity"],
            "rule": alert["rule"],
            "reason": alert["reason"],
            "opened_at": iso(alert["opened_at"]),
            "first_value": alert["first_value"],
            "last_value": alert["last_value"],
            "last_at": iso(alert["last_at"]),
            "peak_value": alert["peak_value"],
            "violation_count": alert["violation_count"],
        }
    state = "NO_DATA"
    if alert_doc is not None:
        state = alert_doc["classification"]
    elif latest_doc is not None:
        state = latest_doc["classification"]
    return {
        "sensor_id": sensor_id,
        "device_uuid": sensor.device_uuid if sensor else None,
        "sensor_uuid": sensor.sensor_uuid if sensor else None,
        "sensor_type": sensor.sensor_type if sensor else None,
        "state": state,
        "latest": latest_doc,
        "active_alert": alert_doc,
    }
