"""The legacy IoT endpoints, unchanged for their clients (seed 002), on top of the bus.

- ``POST /ingest/packets`` — header ``X-Device-Key``; ``{"device_uuid", "readings":
  [{"sensor_uuid", "value", "timestamp"}]}``. The device must be registered, enabled and the key
  its own (401 otherwise; 404 for an unknown device); every sensor_uuid must be one of its
  sensors (404 unknown, 403 another device's). Nothing of a refused packet is published.
- ``POST /ingest/readings`` — header ``X-API-Key``; ``{"sensor_id", "value", "timestamp"}``.
- ``POST /ingest/readings/bulk`` — header ``X-API-Key``; ``{"readings": [...]}`` of those.
  A sensor_id the registry does not know is still accepted (as the legacy endpoint did).
- ``GET /sensors/{sensor_id}/status`` — header ``X-API-Key``: the latest stored reading with its
  class and the open alert, read from the PostgreSQL tables writer-postgres fills
  (``data_points``, ``stream_alerts``).

Points get domain ``iot``, ``stream_id`` = the sensor_id as text, ``source_id`` = the owning
device's uuid (``sensor-<id>`` for a sensor the registry does not know), ``stream_type`` =
``iot.<sensor_type>`` (the IoT classification defaults) and ``legacy`` = the legacy ids; they are
published like ``/ingest/data``'s (``Coalescer``; the reply comes after JetStream's PubAck).

Replies keep the legacy (FastAPI) shapes: 200 ``{"inserted": n}`` (the seed's ``IngestResult``),
errors ``{"detail": "..."}``, and an invalid body 422 ``{"detail": [{"loc", "msg", "type"}]}``
with ``loc`` starting at ``"body"``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any
from uuid import UUID

import asyncpg
import nats.errors
import structlog
from prometheus_client import Counter
from pydantic import BaseModel, BeforeValidator, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from tributary_contracts import DEVICES_BUCKET, DataPoint, LegacyIds, PointClass
from tributary_ingest.batches import PublishError, error_type
from tributary_ingest.coalesce import settle
from tributary_ingest.points import (
    IOT_DOMAIN,
    MalformedJson,
    build_point,
    check_value,
    parse_json,
    parse_timestamp,
)
from tributary_runtime.apikeys import Action
from tributary_runtime.devices import (
    MAX_SENSOR_ID,
    DeviceRegistry,
    SensorIndexRecord,
    canonical_uuid,
    key_matches,
    unregistered_source_id,
)
from tributary_runtime.ops import Reply, json_response

DEVICE_KEY_HEADER = "X-Device-Key"

log = structlog.get_logger("gateway_http.legacy")

LEGACY_REQUESTS = Counter(
    "gateway_http_legacy_requests",
    "Legacy IoT endpoint replies by endpoint (packets, readings, bulk, status) and HTTP status.",
    ["endpoint", "status"],
)
LEGACY_REFUSED = Counter(
    "gateway_http_legacy_refused",
    "Legacy IoT requests refused, by reason (missing_device_key, unknown_device, "
    "wrong_device_key, disabled_device, unknown_sensor, foreign_sensor, invalid_body).",
    ["reason"],
)
LEGACY_POINTS = Counter(
    "gateway_http_legacy_points_published",
    "Legacy IoT readings acknowledged by JetStream on dp.raw.iot, by endpoint.",
    ["endpoint"],
)
LEGACY_CLASS = {
    PointClass.CRITICAL.value: "ALERT",
    PointClass.ANOMALY.value: "WARNING",
    PointClass.WARNING.value: "WARNING",
    PointClass.NORMAL.value: "ML_PREDICTION",
    PointClass.REJECTED.value: "REJECTED",
}
"""The legacy ReadingClass name of a stored class (status replies carry both)."""


# -- request bodies (the legacy schemas) -------------------------------------------------------
def _value(raw: Any) -> float:
    checked = check_value(raw)
    if isinstance(checked, str):
        raise ValueError(checked)
    return checked


def _timestamp(raw: Any) -> datetime | None:
    if raw is None:
        return None
    checked = parse_timestamp(raw)
    if isinstance(checked, str):
        raise ValueError(checked)
    return checked


Value = Annotated[float, BeforeValidator(_value)]
Timestamp = Annotated[datetime | None, BeforeValidator(_timestamp)]
SensorId = Annotated[int, Field(ge=0, le=MAX_SENSOR_ID)]


class SensorReadingIn(BaseModel):
    """One reading by integer sensor id (``/ingest/readings``, items of the bulk body)."""

    sensor_id: SensorId
    value: Value
    timestamp: Timestamp = None


class BulkReadingsIn(BaseModel):
    readings: list[SensorReadingIn] = Field(min_length=1)


class SensorReadingUuidIn(BaseModel):
    """One reading of a packet, by sensor uuid (checked to be a uuid when it is not one of the
    device's in canonical form: most packets never pay for uuid parsing)."""

    sensor_uuid: str
    value: Value
    timestamp: Timestamp = None


class DevicePacketIn(BaseModel):
    device_uuid: UUID
    readings: list[SensorReadingUuidIn] = Field(min_length=1)


def validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    """FastAPI's 422 ``detail`` list: ``loc`` from ``"body"``, ``msg``, ``type``."""
    return [
        {"loc": ["body", *error["loc"]], "msg": error["msg"], "type": error["type"]}
        for error in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


# -- the endpoints ----------------------------------------------------------------------------
Authorize = Callable[..., Awaitable[None]]


class LegacyIot:
    """The legacy endpoints of one gateway; ``app.create_app`` wires it.

    ``bus()`` is the app's connected bus (``publisher``, …) or None before startup; ``authorize``,
    ``read_body`` and ``unavailable`` are the app's own (same API keys, limits and 503s)."""

    def __init__(
        self,
        settings: Any,
        bus: Callable[[], Any],
        authorize: Authorize,
        read_body: Callable[[Request], Awaitable[bytes]],
        unavailable: Callable[..., Reply],
    ) -> None:
        self._settings = settings
        self._bus = bus
        self._authorize = authorize
        self._read_body = read_body
        self._unavailable = unavailable
        self.registry: DeviceRegistry | None = None
        self._pool: asyncpg.Pool | None = None
        self._pool_lock = asyncio.Lock()

    async def start(self, js: Any) -> None:
        kv = await js.key_value(self._settings.namespace.bucket(DEVICES_BUCKET))
        self.registry = DeviceRegistry(kv, cache_seconds=self._settings.device_cache_seconds)

    async def stop(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None

    def routes(self) -> list[Route]:
        return [
            Route("/ingest/packets", self._endpoint("packets", self.packets), methods=["POST"]),
            Route("/ingest/readings", self._endpoint("readings", self.reading), methods=["POST"]),
            Route("/ingest/readings/bulk", self._endpoint("bulk", self.bulk), methods=["POST"]),
            Route(
                "/sensors/{sensor_id}/status",
                self._endpoint("status", self.status),
                methods=["GET"],
            ),
        ]

    # -- plumbing -------------------------------------------------------------------------------
    def _endpoint(
        self, name: str, handler: Callable[[Request], Awaitable[tuple[int, Any]]]
    ) -> Callable[[Request], Awaitable[Response]]:
        async def endpoint(request: Request) -> Response:
            headers = None
            try:
                status, body = await handler(request)
            except Reply as reply:
                status, headers = reply.status, reply.headers
                body = {"detail": reply.body.get("error", reply.body.get("detail"))}
                body.update((k, v) for k, v in reply.body.items() if k not in ("error", "detail"))
            except Exception as exc:
                log.exception("legacy_request_failed", endpoint=name, error=repr(exc))
                status, body = 500, {"detail": "internal error; it was logged"}
            LEGACY_REQUESTS.labels(name, str(status)).inc()
            return json_response(status, body, headers)

        return endpoint

    def _ready(self) -> tuple[Any, DeviceRegistry]:
        bus = self._bus()
        if bus is None or self.registry is None:
            raise self._unavailable("startup", "not_started", "lifespan has not connected the bus")
        return bus, self.registry

    @staticmethod
    def _refuse(status: int, reason: str, detail: str) -> Reply:
        LEGACY_REFUSED.labels(reason).inc()
        return Reply(status, {"detail": detail})

    async def _parse(self, request: Request, model: type[BaseModel]) -> Any:
        body = await self._read_body(request)
        try:
            return model.model_validate(parse_json(body) if body else None)
        except MalformedJson as exc:
            LEGACY_REFUSED.labels("invalid_body").inc()
            raise Reply(
                422, {"detail": [{"loc": ["body"], "msg": str(exc), "type": "json_invalid"}]}
            ) from None
        except ValidationError as exc:
            LEGACY_REFUSED.labels("invalid_body").inc()
            raise Reply(422, {"detail": validation_detail(exc)}) from None

    async def _registry_call(self, call: Awaitable[Any]) -> Any:
        try:
            return await call
        except (nats.errors.Error, TimeoutError, OSError) as exc:
            raise self._unavailable(
                "registry",
                error_type(exc),
                repr(exc),
                "the device registry did not answer; nothing was accepted, retry later",
            ) from None

    async def _publish(
        self, bus: Any, endpoint: str, received_at: datetime, groups: dict[str, list[DataPoint]]
    ) -> int:
        """Publish every source's points; returns the count once JetStream acked them all."""
        publisher = bus.publisher
        deadline = asyncio.get_running_loop().time() + publisher.timeout
        submitted = [
            publisher.submit(IOT_DOMAIN, source_id, received_at, points)
            for source_id, points in groups.items()
        ]
        try:
            for one in submitted:
                await settle(one, deadline)
        except PublishError as exc:
            raise self._unavailable("publish", exc.error_type, str(exc)) from None
        count = sum(len(points) for points in groups.values())
        LEGACY_POINTS.labels(endpoint).inc(count)
        return count

    # -- handlers -----------------------------------------------------------------------------
    async def packets(self, request: Request) -> tuple[int, Any]:
        """POST /ingest/packets: a device's readings by sensor uuid → dp.raw.iot.part.<p>."""
        received_at = datetime.now(UTC)
        bus, registry = self._ready()
        key = request.headers.get(DEVICE_KEY_HEADER)
        if not key:
            raise self._refuse(401, "missing_device_key", f"missing {DEVICE_KEY_HEADER} header")
        packet: DevicePacketIn = await self._parse(request, DevicePacketIn)
        device_uuid = str(packet.device_uuid)
        device = await self._registry_call(registry.device(device_uuid))
        if device is None:
            raise self._refuse(404, "unknown_device", f"device {device_uuid} is not registered")
        if not key_matches(device.record, key):
            raise self._refuse(
                401, "wrong_device_key", f"{DEVICE_KEY_HEADER} is not the key of {device_uuid}"
            )
        if not device.record.enabled:
            raise self._refuse(401, "disabled_device", f"device {device_uuid} is disabled")
        points = []
        sensors = device.by_uuid
        for index, reading in enumerate(packet.readings):
            sensor = sensors.get(reading.sensor_uuid)
            if sensor is None:
                sensor_uuid = self._sensor_uuid(reading.sensor_uuid, index)
                sensor = sensors.get(sensor_uuid)
            if sensor is None:
                owner = await self._registry_call(registry.sensor_by_uuid(sensor_uuid))
                if owner is None:
                    raise self._refuse(
                        404,
                        "unknown_sensor",
                        f"readings[{index}]: sensor {sensor_uuid} is not registered",
                    )
                raise self._refuse(
                    403,
                    "foreign_sensor",
                    f"readings[{index}]: sensor {sensor_uuid} is not a sensor of device "
                    f"{device_uuid}",
                )
            stream_id, stream_type, legacy = sensor
            points.append(
                build_point(
                    {
                        "stream_id": stream_id,
                        "value": reading.value,
                        "ts": reading.timestamp or received_at,
                        "stream_type": stream_type,
                        "sequence": None,
                        "metadata": {},
                        "legacy": legacy,
                    }
                )
            )
        inserted = await self._publish(bus, "packets", received_at, {device_uuid: points})
        return 200, {"inserted": inserted}

    @staticmethod
    def _sensor_uuid(raw: str, index: int) -> str:
        """``raw`` in canonical form, or the 422 FastAPI gives a malformed UUID field."""
        try:
            return canonical_uuid(raw)
        except ValueError as exc:
            LEGACY_REFUSED.labels("invalid_body").inc()
            detail = {
                "loc": ["body", "readings", index, "sensor_uuid"],
                "msg": f"Input should be a valid UUID: {exc}",
                "type": "uuid_parsing",
            }
            raise Reply(422, {"detail": [detail]}) from None

    async def reading(self, request: Request) -> tuple[int, Any]:
        """POST /ingest/readings: one reading by sensor_id → dp.raw.iot.part.<p>."""
        return await self._readings(request, "readings")

    async def bulk(self, request: Request) -> tuple[int, Any]:
        """POST /ingest/readings/bulk: readings by sensor_id → dp.raw.iot.part.<p> per device."""
        return await self._readings(request, "bulk")

    async def _readings(self, request: Request, endpoint: str) -> tuple[int, Any]:
        received_at = datetime.now(UTC)
        bus, registry = self._ready()
        await self._authorize(request, bus)
        if endpoint == "bulk":
            readings = (await self._parse(request, BulkReadingsIn)).readings
            limit = self._settings.max_points_per_request
            if len(readings) > limit:
                raise Reply(413, {"detail": f"readings has {len(readings)} items; at most {limit}"})
        else:
            readings = [await self._parse(request, SensorReadingIn)]
        groups: dict[str, list[DataPoint]] = {}
        for reading in readings:
            sensor: SensorIndexRecord | None = await self._registry_call(
                registry.sensor(reading.sensor_id)
            )
            if sensor is None:
                source_id = unregistered_source_id(reading.sensor_id)
                stream_type, legacy = None, LegacyIds(sensor_id=reading.sensor_id)
            else:
                source_id, stream_type = sensor.device_uuid, sensor.stream_type
                legacy = LegacyIds(
                    sensor_id=sensor.sensor_id,
                    device_uuid=sensor.device_uuid,
                    sensor_uuid=sensor.sensor_uuid,
                )
            groups.setdefault(source_id, []).append(
                _point(
                    reading.sensor_id,
                    reading.value,
                    reading.timestamp or received_at,
                    stream_type,
                    legacy,
                )
            )
        inserted = await self._publish(bus, endpoint, received_at, groups)
        return 200, {"inserted": inserted}

    async def status(self, request: Request) -> tuple[int, Any]:
        """GET /sensors/{sensor_id}/status: latest stored reading, its class, the open alert."""
        bus, registry = self._ready()
        await self._authorize(request, bus, Action.READ)
        raw = request.path_params["sensor_id"]
        if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_SENSOR_ID:
            LEGACY_REFUSED.labels("invalid_body").inc()
            raise Reply(
                422,
                {
                    "detail": [
                        {
                            "loc": ["path", "sensor_id"],
                            "msg": f"sensor_id {raw[:32]!r} is not a non-negative integer",
                            "type": "int_parsing",
                        }
                    ]
                },
            )
        sensor_id = int(raw)
        sensor = await self._registry_call(registry.sensor(sensor_id))
        sources = [unregistered_source_id(sensor_id)]
        if sensor is not None:
            sources.insert(0, sensor.device_uuid)
        latest, alert = await self._stored_status(sources, str(sensor_id))
        if sensor is None and latest is None and alert is None:
            raise self._refuse(
                404, "unknown_sensor", f"sensor {sensor_id} is not registered and has no readings"
            )
        return 200, status_body(sensor_id, sensor, latest, alert)

    async def _stored_status(
        self, sources: list[str], stream_id: str
    ) -> tuple[asyncpg.Record | None, asyncpg.Record | None]:
        try:
            pool = await self._connect()
            async with pool.acquire() as conn:
                latest = await conn.fetchrow(LATEST_SQL, IOT_DOMAIN, sources, stream_id)
                alert = await conn.fetchrow(OPEN_ALERT_SQL, IOT_DOMAIN, sources, stream_id)
        except (asyncpg.UndefinedTableError, asyncpg.InvalidCatalogNameError):
            return None, None  # the writer has not created its tables yet: nothing stored
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise self._unavailable(
                "status",
                type(exc).__name__[:40],
                repr(exc),
                "PostgreSQL did not answer the status query; retry later",
            ) from None
        return latest, alert

    async def _connect(self) -> asyncpg.Pool:
        async with self._pool_lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(
                    self._settings.postgres_dsn, min_size=0, max_size=2, timeout=5
                )
            return self._pool


LATEST_SQL = """
SELECT time, value, cls, reason, stream_type, source_id FROM data_points
 WHERE domain = $1 AND source_id = ANY($2::text[]) AND stream_id = $3
 ORDER BY time DESC LIMIT 1
"""
OPEN_ALERT_SQL = """
SELECT alert_id, severity, rule, reason, first_value, first_at, last_value, last_at, peak_value,
       violation_count, opened_at
  FROM stream_alerts
 WHERE domain = $1 AND source_id = ANY($2::text[]) AND stream_id = $3 AND status = 'open'
 ORDER BY opened_at DESC LIMIT 1
"""


def _point(
    sensor_id: int,
    value: float,
    ts: datetime,
    stream_type: str | None,
    legacy: LegacyIds,
) -> DataPoint:
    return build_point(
        {
            "stream_id": str(sensor_id),
            "value": value,
            "ts": ts,
            "stream_type": stream_type,
            "sequence": None,
            "metadata": {},
            "legacy": legacy,
        }
    )


def _iso(value: datetime | None) -> str | None:
    return value.astimezone(UTC).isoformat().replace("+00:00", "Z") if value else None


def status_body(
    sensor_id: int,
    sensor: SensorIndexRecord | None,
    latest: Any,
    alert: Any,
) -> dict[str, Any]:
    """The status reply: registry ids, the latest reading and the open alert (or nulls).

    ``state`` is the legacy class of the open alert if there is one, else of the latest
    reading (``NO_DATA`` when nothing is stored)."""
    latest_doc = None
    if latest is not None:
        latest_doc = {
            "value": latest["value"],
            "timestamp": _iso(latest["time"]),
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
            "opened_at": _iso(alert["opened_at"]),
            "first_value": alert["first_value"],
            "last_value": alert["last_value"],
            "last_at": _iso(alert["last_at"]),
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
