"""Deprecation of the legacy IoT endpoints (seed 001 §7.1, FASE 7): headers and use per device.

``LegacyDeprecation`` is an ASGI middleware in front of the app. On the legacy endpoints
(``/ingest/packets``, ``/ingest/readings``, ``/ingest/readings/bulk``, ``/sensors/{id}/status``,
``/devices/{uuid}/readings``) it:

- adds, once the operator sets ``LEGACY_SUNSET``, ``Deprecation`` (RFC 9745: ``@<epoch>`` of
  ``LEGACY_DEPRECATED_SINCE``, or ``true``), ``Sunset`` (RFC 8594, an HTTP-date) and ``Link``
  (``<LEGACY_MIGRATION_URL>; rel="deprecation"`` and ``rel="sunset"``) to every reply;
- counts every request per device in ``gateway_http_legacy_use_total{endpoint, device}``: the
  ``device_uuid`` of a packet or of the path, else ``sensor-<id>`` of a reading (the first of a
  bulk), else ``unknown``; at most ``LEGACY_USAGE_MAX_DEVICES`` devices get their own label, the
  rest count as ``other`` (bounded label values).

The handlers are untouched: the body is read from a copy of what the handler received.
"""

from __future__ import annotations

import calendar
import re
from datetime import date
from email.utils import formatdate
from typing import Any

import orjson
from prometheus_client import Counter
from pydantic import BaseModel, Field

LEGACY_USE = Counter(
    "gateway_http_legacy_use",
    "Requests to the legacy IoT endpoints, by endpoint and device (bounded, see "
    "LEGACY_USAGE_MAX_DEVICES; 'other' beyond it).",
    ["endpoint", "device"],
)

_ENDPOINTS = (
    (re.compile(r"^/ingest/packets$"), "packets"),
    (re.compile(r"^/ingest/readings$"), "readings"),
    (re.compile(r"^/ingest/readings/bulk$"), "bulk"),
    (re.compile(r"^/sensors/([^/]+)/status$"), "status"),
    (re.compile(r"^/devices/([^/]+)/readings$"), "device_readings"),
)
MAX_BODY_PEEK = 64 * 1024


class DeprecationSettings(BaseModel):
    """The legacy endpoints' deprecation (env vars of the same names)."""

    legacy_sunset: date | None = Field(
        default=None,
        description="Date the legacy IoT endpoints go away (YYYY-MM-DD); set: their replies carry "
        "Deprecation, Sunset and Link headers. Unset: no headers.",
    )
    legacy_deprecated_since: date | None = Field(
        default=None,
        description="Date the legacy endpoints were deprecated (Deprecation: @<epoch>); unset: "
        "Deprecation: true.",
    )
    legacy_migration_url: str = Field(
        default="/openapi.json",
        description="Where producers read how to move to POST /ingest/data (Link rel=deprecation "
        "and rel=sunset).",
    )
    legacy_usage_max_devices: int = Field(
        default=10_000,
        ge=0,
        description="Devices counted with their own label in gateway_http_legacy_use_total; "
        "further devices count as 'other'.",
    )


def deprecation_headers(settings: DeprecationSettings) -> list[tuple[bytes, bytes]]:
    """The headers every legacy reply gets (none until a sunset date is set)."""
    if settings.legacy_sunset is None:
        return []
    since = settings.legacy_deprecated_since
    deprecation = "true" if since is None else f"@{calendar.timegm(since.timetuple())}"
    sunset = formatdate(calendar.timegm(settings.legacy_sunset.timetuple()), usegmt=True)
    link = (
        f'<{settings.legacy_migration_url}>; rel="deprecation", '
        f'<{settings.legacy_migration_url}>; rel="sunset"'
    )
    return [
        (b"deprecation", deprecation.encode()),
        (b"sunset", sunset.encode()),
        (b"link", link.encode()),
    ]


def legacy_endpoint(path: str) -> tuple[str, str | None] | None:
    """``(endpoint, id in the path)`` of a legacy endpoint's path, else None."""
    for pattern, name in _ENDPOINTS:
        match = pattern.match(path)
        if match:
            return name, match.group(1) if match.groups() else None
    return None


def device_of(endpoint: str, path_id: str | None, body: bytes) -> str:
    """Which device a legacy request came from (see the module docstring)."""
    if endpoint == "device_readings" and path_id:
        return path_id
    if endpoint == "status" and path_id:
        return f"sensor-{path_id}"
    try:
        doc = orjson.loads(body) if body else None
    except orjson.JSONDecodeError:
        return "unknown"
    if isinstance(doc, dict):
        if isinstance(doc.get("device_uuid"), str):
            return str(doc["device_uuid"])[:64]
        readings = doc.get("readings")
        first = readings[0] if isinstance(readings, list) and readings else doc
        if isinstance(first, dict) and isinstance(first.get("sensor_id"), int | str):
            return f"sensor-{str(first['sensor_id'])[:32]}"
    return "unknown"


class LegacyDeprecation:
    """ASGI middleware: deprecation headers and use per device on the legacy endpoints."""

    def __init__(self, app: Any, settings: DeprecationSettings) -> None:
        self.app = app
        self.headers = deprecation_headers(settings)
        self.max_devices = settings.legacy_usage_max_devices
        self.devices: set[str] = set()

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        found = legacy_endpoint(scope["path"]) if scope["type"] == "http" else None
        if found is None:
            await self.app(scope, receive, send)
            return
        endpoint, path_id = found
        peek = bytearray()

        async def tee() -> Any:
            message = await receive()
            if message["type"] == "http.request" and len(peek) < MAX_BODY_PEEK:
                peek.extend(message.get("body", b"")[: MAX_BODY_PEEK - len(peek)])
            return message

        async def send_with_headers(message: Any) -> None:
            if message["type"] == "http.response.start" and self.headers:
                message = {**message, "headers": [*message.get("headers", []), *self.headers]}
            await send(message)

        try:
            await self.app(scope, tee, send_with_headers)
        finally:
            self._count(endpoint, device_of(endpoint, path_id, bytes(peek)))

    def _count(self, endpoint: str, device: str) -> None:
        if device not in self.devices:
            if len(self.devices) >= self.max_devices:
                device = "other"
            else:
                self.devices.add(device)
        LEGACY_USE.labels(endpoint=endpoint, device=device).inc()
