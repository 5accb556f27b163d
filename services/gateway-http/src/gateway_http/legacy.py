"""The legacy IoT endpoints, unchanged for their clients (seeds 002 and 004), on top of the bus.

- ``POST /ingest/packets`` — header ``X-Device-Key``; ``{"device_uuid", "readings":
  [{"sensor_uuid", "value", "timestamp"}]}``. ``POST /devices/{uuid}/readings`` — the same with
  the device in the path and ``{"readings": [...]}``. Device authentication
  (``DEVICE_AUTH_MODE``): ``required`` — the device's own key; ``migration`` — a packet without
  the header is also accepted from a registered, enabled device (counted, audited once per device
  per ``DEVICE_AUTH_AUDIT_SECONDS``). A wrong key is one 401 whether or not the device exists.
  Every sensor_uuid must be one of the device's sensors (404 unknown, 403 another device's).
  Nothing of a refused packet is published.
- ``POST /ingest/readings`` — header ``X-API-Key``; ``{"sensor_id", "value", "timestamp"}``.
- ``POST /ingest/readings/bulk`` — header ``X-API-Key``; ``{"readings": [...]}`` of those.
  A sensor_id the registry does not know is still accepted (as the legacy endpoint did).
- ``GET /sensors/{sensor_id}/status``, ``GET /devices/{uuid}/readings`` — header ``X-API-Key``:
  what is stored, read from the database owning domain ``iot`` (``sensor_status``).

Every endpoint spends the client IP's request budget, and ingest the device's (source's) point
budget, before anything is published (429 + ``Retry-After``).

Points get domain ``iot``, ``stream_id`` = the sensor_id as text, ``source_id`` = the owning
device's uuid (``sensor-<id>`` for a sensor the registry does not know), ``stream_type`` =
``iot.<sensor_type>`` (the IoT classification defaults) and ``legacy`` = the legacy ids; they are
published like ``/ingest/data``'s (``Coalescer``; the reply comes after JetStream's PubAck).

Replies keep the legacy (FastAPI) shapes: 200 ``{"inserted": n}`` (the seed's ``IngestResult``),
errors ``{"detail": "..."}``, and an invalid body 422 ``{"detail": [{"loc", "msg", "type"}]}``
with ``loc`` starting at ``"body"``.
"""

from __future__ import annotations

import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Annotated, Any, TypeVar
from uuid import UUID

import nats.errors
from prometheus_client import Counter
from pydantic import BaseModel, BeforeValidator, Field, ValidationError
from starlette.requests import Request
from starlette.routing import Route

from gateway_http.context import HttpContext
from gateway_http.metrics import ERRORS
from gateway_http.sensor_status import StoreUnavailable, reading_body, status_body
from tributary_access.apikeys import Action
from tributary_access.guard import client_ip
from tributary_contracts import AuditAction, DataPoint, LegacyIds
from tributary_ingest import http
from tributary_ingest.http import Answer, Handler, Slot, detail_shape, endpoint
from tributary_ingest.points import (
    IOT_DOMAIN,
    MalformedJson,
    build_point,
    check_value,
    parse_json,
    parse_timestamp,
)
from tributary_runtime.devices import (
    MAX_SENSOR_ID,
    Device,
    canonical_uuid,
    hash_device_key,
    key_matches,
    unregistered_source_id,
)
from tributary_runtime.ops import Reply

DEVICE_KEY_HEADER = "X-Device-Key"
MISSING_DEVICE_KEY = f"missing {DEVICE_KEY_HEADER} header"
INVALID_DEVICE_KEY = DEVICE_KEY_HEADER + " is not valid for device {}"
"""The one 401 for a wrong key: the same whether or not the device is registered."""
_KEYLESS_LIMIT = 100_000
DEFAULT_READINGS = 100
MAX_READINGS = 1000

_T = TypeVar("_T")

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
KEYLESS_PACKETS = Counter(
    "gateway_http_legacy_keyless_packets",
    "Packets accepted without X-Device-Key from registered devices (DEVICE_AUTH_MODE=migration); "
    "0 for a while means the switch to 'required' is safe.",
)
LEGACY_POINTS = Counter(
    "gateway_http_legacy_points_published",
    "Legacy IoT readings acknowledged by JetStream on dp.raw.iot, by endpoint.",
    ["endpoint"],
)


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


class DeviceReadingsIn(BaseModel):
    """``POST /devices/{uuid}/readings``: a packet whose device is named by the path."""

    readings: list[SensorReadingUuidIn] = Field(min_length=1)


def validation_detail(exc: ValidationError) -> list[dict[str, Any]]:
    """FastAPI's 422 ``detail`` list: ``loc`` from ``"body"``, ``msg``, ``type``."""
    return [
        {"loc": ["body", *error["loc"]], "msg": error["msg"], "type": error["type"]}
        for error in exc.errors(include_url=False, include_context=False, include_input=False)
    ]


# -- the endpoints ----------------------------------------------------------------------------
def routes(slot: Slot[HttpContext], not_started: Callable[[], Reply]) -> list[Route]:
    """The legacy endpoints on the context of ``slot``: legacy reply shapes, counted."""

    def route(path: str, name: str, handler: Handler[HttpContext], method: str) -> Route:
        def count(_: Request, answer: Answer) -> None:
            LEGACY_REQUESTS.labels(name, str(answer.status)).inc()

        run = endpoint(slot, handler, not_started, ERRORS, shape=detail_shape, count=count)
        return Route(path, run, methods=[method])

    return [
        route("/ingest/packets", "packets", packets, "POST"),
        route("/ingest/readings", "readings", reading, "POST"),
        route("/ingest/readings/bulk", "bulk", bulk, "POST"),
        route("/devices/{device_uuid}/readings", "device_readings", device_post, "POST"),
        route("/devices/{device_uuid}/readings", "device_history", device_get, "GET"),
        route("/sensors/{sensor_id}/status", "status", status, "GET"),
    ]


def _refuse(status: int, reason: str, detail: str) -> Reply:
    LEGACY_REFUSED.labels(reason).inc()
    return Reply(status, {"detail": detail})


async def _authorize(ctx: HttpContext, request: Request, action: Action) -> None:
    """The key, then its role and scope (writes: domain iot)."""
    granted = await http.authenticate(ctx.gateway, request)
    domain = IOT_DOMAIN if action is Action.WRITE_POINTS else None
    http.check(ctx.gateway, request, granted, action, domain)


async def _parse(ctx: HttpContext, request: Request, model: type[BaseModel]) -> Any:
    body = await ctx.read_body(request)
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


async def _registry_call(ctx: HttpContext, call: Awaitable[_T]) -> _T:
    try:
        return await call
    except (nats.errors.Error, TimeoutError, OSError) as exc:
        raise ctx.gateway.fault(
            "registry", exc, "the device registry did not answer; nothing was accepted, retry later"
        ) from None


async def _publish(
    ctx: HttpContext, endpoint: str, received_at: datetime, groups: dict[str, list[DataPoint]]
) -> Answer:
    """Every source's points within their budgets (429/413), published; 200 ``{"inserted": n}``
    once JetStream acked them all."""
    gateway = ctx.gateway
    try:
        gateway.admit_sources(IOT_DOMAIN, groups, received_at)
    except Reply:
        LEGACY_REFUSED.labels("rate_limited").inc()
        raise
    inserted = await gateway.publish_sources(IOT_DOMAIN, groups, received_at)
    LEGACY_POINTS.labels(endpoint).inc(inserted)
    return Answer(200, {"inserted": inserted})


async def packets(ctx: HttpContext, request: Request) -> Answer:
    """POST /ingest/packets: a device's readings by sensor uuid → dp.raw.iot.part.<p>."""
    return await _device_readings(ctx, request, "packets", None)


async def device_post(ctx: HttpContext, request: Request) -> Answer:
    """POST /devices/{uuid}/readings: the packet of the device named in the path."""
    raw = request.path_params["device_uuid"]
    try:
        device_uuid = canonical_uuid(raw)
    except ValueError as exc:
        detail = f"Input should be a valid UUID: {exc}"
        raise _path_422("device_uuid", detail, "uuid_parsing") from None
    return await _device_readings(ctx, request, "device_readings", device_uuid)


async def _device_readings(
    ctx: HttpContext, request: Request, endpoint: str, path_device: str | None
) -> Answer:
    received_at = datetime.now(UTC)
    registry = ctx.registry
    ctx.gateway.guard.admit(client_ip(request.scope))
    key = request.headers.get(DEVICE_KEY_HEADER)
    if not key and ctx.settings.device_auth_mode == "required":
        raise _refuse(401, "missing_device_key", MISSING_DEVICE_KEY)
    if path_device is None:
        packet: DevicePacketIn = await _parse(ctx, request, DevicePacketIn)
        device_uuid, readings = str(packet.device_uuid), packet.readings
    else:
        body: DeviceReadingsIn = await _parse(ctx, request, DeviceReadingsIn)
        device_uuid, readings = path_device, body.readings
    device = await _registry_call(ctx, registry.device(device_uuid))
    _authenticate_device(ctx, request, device_uuid, device, key)
    assert device is not None  # _authenticate_device refused every other case
    points = []
    sensors = device.by_uuid
    for index, reading in enumerate(readings):
        sensor = sensors.get(reading.sensor_uuid)
        if sensor is None:
            sensor_uuid = _sensor_uuid(reading.sensor_uuid, index)
            sensor = sensors.get(sensor_uuid)
        if sensor is None:
            owner = await _registry_call(ctx, registry.sensor_by_uuid(sensor_uuid))
            if owner is None:
                problem = f"readings[{index}]: sensor {sensor_uuid} is not registered"
                raise _refuse(404, "unknown_sensor", problem)
            raise _refuse(
                403,
                "foreign_sensor",
                f"readings[{index}]: sensor {sensor_uuid} is not a sensor of device {device_uuid}",
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
    return await _publish(ctx, endpoint, received_at, {device_uuid: points})


def _authenticate_device(
    ctx: HttpContext, request: Request, device_uuid: str, device: Device | None, key: str | None
) -> None:
    """The device-key decision (module docstring): returns when the packet may go on.

    An unknown device and a known one with a wrong key get the same 401 and the same work
    (one SHA-256), so the reply never tells whether a device is registered."""
    if key:
        matches = key_matches(device.record, key) if device is not None else False
        if device is None:
            hash_device_key(key)  # same work as a known device's comparison
        if not matches:
            reason = "unknown_device" if device is None else "wrong_device_key"
            raise _refuse(401, reason, INVALID_DEVICE_KEY.format(device_uuid))
        if device is not None and not device.record.enabled:
            raise _refuse(401, "disabled_device", f"device {device_uuid} is disabled")
        return
    # No key; only reached in migration mode.
    if device is None or not device.record.enabled:
        raise _refuse(401, "missing_device_key", MISSING_DEVICE_KEY)
    KEYLESS_PACKETS.inc()
    _audit_keyless(ctx, request, device_uuid)


def _audit_keyless(ctx: HttpContext, request: Request, device_uuid: str) -> None:
    """One ``device_unauthenticated`` event per device per DEVICE_AUTH_AUDIT_SECONDS."""
    keyless = ctx.keyless
    now = time.monotonic()
    last, count = keyless.get(device_uuid, (None, 0))
    count += 1
    if last is not None and now - last < ctx.settings.device_auth_audit_seconds:
        keyless[device_uuid] = (last, count)
        return
    if len(keyless) >= _KEYLESS_LIMIT:
        keyless.clear()
    keyless[device_uuid] = (now, 0)
    audit = ctx.gateway.audit
    audit.record_soon(
        audit.event(
            AuditAction.DEVICE_UNAUTHENTICATED,
            client_ip=client_ip(request.scope),
            target=f"device {device_uuid}",
            reason=f"DEVICE_AUTH_MODE=migration accepted packets without {DEVICE_KEY_HEADER}",
            details={"device_uuid": device_uuid, "packets": count},
        )
    )


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


async def reading(ctx: HttpContext, request: Request) -> Answer:
    """POST /ingest/readings: one reading by sensor_id → dp.raw.iot.part.<p>."""
    return await _readings(ctx, request, "readings")


async def bulk(ctx: HttpContext, request: Request) -> Answer:
    """POST /ingest/readings/bulk: readings by sensor_id → dp.raw.iot.part.<p> per device."""
    return await _readings(ctx, request, "bulk")


async def _readings(ctx: HttpContext, request: Request, endpoint: str) -> Answer:
    received_at = datetime.now(UTC)
    await _authorize(ctx, request, Action.WRITE_POINTS)
    if endpoint == "bulk":
        readings = (await _parse(ctx, request, BulkReadingsIn)).readings
        limit = ctx.settings.max_points_per_request
        if len(readings) > limit:
            raise Reply(413, {"detail": f"readings has {len(readings)} items; at most {limit}"})
    else:
        readings = [await _parse(ctx, request, SensorReadingIn)]
    groups: dict[str, list[DataPoint]] = {}
    for one in readings:
        sensor = await _registry_call(ctx, ctx.registry.sensor(one.sensor_id))
        if sensor is None:
            source_id = unregistered_source_id(one.sensor_id)
            stream_type, legacy = None, LegacyIds(sensor_id=one.sensor_id)
        else:
            source_id, stream_type = sensor.device_uuid, sensor.stream_type
            legacy = LegacyIds(
                sensor_id=sensor.sensor_id,
                device_uuid=sensor.device_uuid,
                sensor_uuid=sensor.sensor_uuid,
            )
        groups.setdefault(source_id, []).append(
            _point(one.sensor_id, one.value, one.timestamp or received_at, stream_type, legacy)
        )
    return await _publish(ctx, endpoint, received_at, groups)


async def status(ctx: HttpContext, request: Request) -> Answer:
    """GET /sensors/{sensor_id}/status: latest stored reading, its class, the open alert."""
    await _authorize(ctx, request, Action.READ)
    raw = request.path_params["sensor_id"]
    if not (raw.isascii() and raw.isdigit()) or int(raw) > MAX_SENSOR_ID:
        raise _path_422(
            "sensor_id", f"sensor_id {raw[:32]!r} is not a non-negative integer", "int_parsing"
        )
    sensor_id = int(raw)
    sensor = await _registry_call(ctx, ctx.registry.sensor(sensor_id))
    sources = [unregistered_source_id(sensor_id)]
    if sensor is not None:
        sources.insert(0, sensor.device_uuid)
    latest, alert = await _stored(ctx, ctx.stored.status(sensor_id, sources))
    if sensor is None and latest is None and alert is None:
        raise _refuse(
            404, "unknown_sensor", f"sensor {sensor_id} is not registered and has no readings"
        )
    return Answer(200, status_body(sensor_id, sensor, latest, alert))


async def device_get(ctx: HttpContext, request: Request) -> Answer:
    """GET /devices/{uuid}/readings: the device's latest stored readings (X-API-Key)."""
    await _authorize(ctx, request, Action.READ)
    try:
        device_uuid = canonical_uuid(request.path_params["device_uuid"])
    except ValueError as exc:
        detail = f"Input should be a valid UUID: {exc}"
        raise _path_422("device_uuid", detail, "uuid_parsing") from None
    raw_limit = request.query_params.get("limit", str(DEFAULT_READINGS))
    if not raw_limit.isdigit() or not 1 <= int(raw_limit) <= MAX_READINGS:
        LEGACY_REFUSED.labels("invalid_body").inc()
        msg = f"limit must be an integer from 1 to {MAX_READINGS}"
        raise Reply(
            422, {"detail": [{"loc": ["query", "limit"], "msg": msg, "type": "int_parsing"}]}
        )
    device = await _registry_call(ctx, ctx.registry.device(device_uuid))
    sensors = {} if device is None else {s.sensor_id: s.sensor_uuid for s in device.record.sensors}
    rows = await _stored(ctx, ctx.stored.readings(device_uuid, list(sensors), int(raw_limit)))
    if device is None and not rows:
        raise _refuse(
            404, "unknown_device", f"device {device_uuid} is not registered and has no readings"
        )
    by_stream = {str(k): v for k, v in sensors.items()}
    return Answer(
        200,
        {"device_uuid": device_uuid, "readings": [reading_body(row, by_stream) for row in rows]},
    )


async def _stored(ctx: HttpContext, read: Awaitable[_T]) -> _T:
    try:
        return await read
    except StoreUnavailable as exc:
        raise ctx.gateway.unavailable(
            "status",
            exc.error_type,
            str(exc),
            f"the database that owns domain iot ({exc.store}) did not answer; retry later",
        ) from None


def _path_422(name: str, msg: str, kind: str) -> Reply:
    LEGACY_REFUSED.labels("invalid_body").inc()
    return Reply(422, {"detail": [{"loc": ["path", name], "msg": msg, "type": kind}]})


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
