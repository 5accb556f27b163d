"""The IoT device registry in the ``iot-devices`` KV bucket: devices, their keys, their sensors.

The legacy IoT system identified a reading by ``device_uuid`` + ``sensor_uuid`` (packets, with a
per-device ``X-Device-Key``) or by the integer ``sensor_id`` (single/bulk readings, the MQTT
topic ``iot/sensors/<sensor_id>/readings``). The registry maps both onto the fleet's ids:
``source_id`` = the owning device's uuid, ``stream_id`` = the sensor_id as text, ``stream_type`` =
``iot.<sensor_type>`` (the IoT defaults the classifier ships under those types).

Bucket keys (NATS KV keys allow ``[-/_=.a-zA-Z0-9]``; uuids are stored in canonical lower case):

- ``device.<device_uuid>`` → ``DeviceRecord`` (serial, SHA-256 of the device key, enabled, and
  the device's sensors),
- ``sensor.<sensor_id>`` and ``sensor-uuid.<sensor_uuid>`` → ``SensorIndexRecord`` (which device
  owns the sensor, its type): the indexes lookups by integer id, and the 403-vs-404 decision for a
  sensor_uuid sent by the wrong device, go through.
- ``serial.<serial>`` → the device uuid (bytes) of the first device stored with that serial
  (created create-only by ``put_device``; only serials matching ``SERIAL_PATTERN``, ≤ 64
  characters): what ``POST /devices/provision`` looks a serial up by.

A device key is shown once, when made (``dev_`` + 32 random bytes, URL-safe); only its SHA-256
is stored. ``DeviceRegistry`` caches answers (and absences) for ``cache_seconds`` so the hot path
is a dict lookup per device and per reading; ``SensorDirectory`` mirrors the ``sensor.*`` index
in memory through a KV watch for callers that cannot await (the MQTT receive path).
"""

from __future__ import annotations

import asyncio
import contextlib
import hashlib
import hmac
import re
import secrets
import time
import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any, TypeVar, cast

import structlog
from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from tributary_contracts import LegacyIds
from tributary_runtime.kvwatch import KvFollower, kv_keys

_T = TypeVar("_T")

log = structlog.get_logger("tributary_runtime.devices")

DEVICE_KEY_PREFIX = "dev_"
STREAM_TYPE_PREFIX = "iot."
"""IoT sensor types become the stream types ``iot.<sensor_type>``, so the legacy rules (physical
range and delta spike only) never mix with the generic defaults of ``temperature`` & co."""
MAX_SENSOR_ID = 2**63 - 1
_CACHE_LIMIT = 100_000
SERIAL_PATTERN = re.compile(r"^[A-Za-z0-9_-]+(\.[A-Za-z0-9_-]+)*$")
"""Serials the ``serial.<serial>`` index holds (valid NATS KV key tokens)."""
MAX_SERIAL = 64
_DELETE_OPERATIONS = ("DEL", "PURGE")


class SensorRecord(BaseModel):
    """One sensor of a device, as the legacy ``sensors`` table held it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sensor_uuid: str = Field(description="Canonical lower-case uuid of the sensor.")
    sensor_id: int = Field(ge=0, le=MAX_SENSOR_ID, description="Legacy integer sensor id.")
    sensor_type: str | None = Field(
        default=None, description="Legacy sensor type (temperature, humidity, …)."
    )


class DeviceRecord(BaseModel):
    """What ``device.<device_uuid>`` holds."""

    model_config = ConfigDict(extra="forbid")

    device_uuid: str = Field(description="Canonical lower-case uuid of the device.")
    serial: str = Field(default="", description="Serial number, for humans.")
    key_sha256: str | None = Field(
        default=None, description="Hex SHA-256 of the device key (None: no key, cannot send)."
    )
    enabled: bool = Field(default=True, description="A disabled device's packets get 401.")
    created_at: datetime = Field(
        default_factory=lambda: datetime.now(UTC), description="When registered (UTC)."
    )
    sensors: list[SensorRecord] = Field(default_factory=list, description="Its sensors.")


class SensorIndexRecord(BaseModel):
    """What ``sensor.<sensor_id>`` and ``sensor-uuid.<sensor_uuid>`` hold."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sensor_id: int = Field(ge=0, le=MAX_SENSOR_ID, description="Legacy integer sensor id.")
    sensor_uuid: str = Field(description="Canonical lower-case uuid of the sensor.")
    device_uuid: str = Field(description="Owning device.")
    sensor_type: str | None = Field(default=None, description="Legacy sensor type.")

    @property
    def stream_type(self) -> str | None:
        return stream_type_of(self.sensor_type)


def canonical_uuid(text: Any) -> str:
    """``text`` as a canonical lower-case uuid; ``ValueError`` naming it when it is none."""
    try:
        return str(uuid.UUID(str(text).strip()))
    except (ValueError, AttributeError):
        raise ValueError(f"{str(text)[:64]!r} is not a uuid") from None


def stream_type_of(sensor_type: str | None) -> str | None:
    """The ``stream_type`` of a legacy sensor type: ``temperature`` → ``iot.temperature``."""
    if not sensor_type:
        return None
    return STREAM_TYPE_PREFIX + sensor_type.strip().lower()


def unregistered_source_id(sensor_id: int) -> str:
    """``source_id`` of a sensor the registry does not know (ARCHITECTURE: ``sensor-<id>``)."""
    return f"sensor-{sensor_id}"


def make_device_key() -> str:
    return DEVICE_KEY_PREFIX + secrets.token_urlsafe(32)


def hash_device_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def key_matches(record: DeviceRecord, key: str) -> bool:
    """Whether ``key`` is the device's key (constant-time comparison of the hashes)."""
    if record.key_sha256 is None:
        return False
    return hmac.compare_digest(record.key_sha256, hash_device_key(key))


def device_key(device_uuid: str) -> str:
    return f"device.{device_uuid}"


def sensor_key(sensor_id: int) -> str:
    return f"sensor.{sensor_id}"


def sensor_uuid_key(sensor_uuid: str) -> str:
    return f"sensor-uuid.{sensor_uuid}"


def indexable_serial(serial: str) -> bool:
    return len(serial) <= MAX_SERIAL and SERIAL_PATTERN.match(serial) is not None


def serial_key(serial: str) -> str:
    return f"serial.{serial}"


class Device:
    """A looked-up device with its sensors indexed by uuid (one dict lookup per reading), each
    with what its points carry made once: ``(stream_id, stream_type, LegacyIds)``."""

    __slots__ = ("by_uuid", "record")

    def __init__(self, record: DeviceRecord) -> None:
        self.record = record
        self.by_uuid: dict[str, tuple[str, str | None, LegacyIds]] = {
            s.sensor_uuid: (
                str(s.sensor_id),
                stream_type_of(s.sensor_type),
                LegacyIds(
                    sensor_id=s.sensor_id,
                    device_uuid=record.device_uuid,
                    sensor_uuid=s.sensor_uuid,
                ),
            )
            for s in record.sensors
        }


class DeviceRegistry:
    """Reads and writes the registry; reads are cached ``cache_seconds`` (absences too)."""

    def __init__(self, kv: Any, cache_seconds: float = 30.0) -> None:
        self._kv = kv
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, object]] = {}

    async def _get(self, key: str, parse: Callable[[bytes], _T]) -> _T | None:
        now = time.monotonic()
        cached = self._cache.get(key)
        if cached is not None and now - cached[0] < self._cache_seconds:
            # a key's prefix (device/sensor/sensor-uuid) fixes its parser, so a cached entry was
            # produced by this very ``parse``
            return cast("_T | None", cached[1])
        value: _T | None
        try:
            entry = await self._kv.get(key)
            value = parse(entry.value) if entry.value else None
        except KeyNotFoundError:
            value = None
        except ValidationError as exc:
            log.warning("ignoring an unreadable registry entry", key=key, error=str(exc)[:300])
            value = None
        if len(self._cache) >= _CACHE_LIMIT:  # bounded: unknown ids must not grow memory
            self._cache.clear()
        self._cache[key] = (now, value)
        return value

    async def device(self, device_uuid: str) -> Device | None:
        """The device ``device_uuid`` (canonical form), or None when it is not registered."""
        return await self._get(
            device_key(device_uuid), lambda raw: Device(DeviceRecord.model_validate_json(raw))
        )

    async def sensor(self, sensor_id: int) -> SensorIndexRecord | None:
        """Who owns sensor ``sensor_id``, or None when it is not registered."""
        return await self._get(sensor_key(sensor_id), SensorIndexRecord.model_validate_json)

    async def sensor_by_uuid(self, sensor_uuid: str) -> SensorIndexRecord | None:
        return await self._get(sensor_uuid_key(sensor_uuid), SensorIndexRecord.model_validate_json)

    # -- writes (the CLI) ---------------------------------------------------------------------
    async def read_device(self, device_uuid: str) -> DeviceRecord | None:
        """Uncached read (for updates)."""
        try:
            entry = await self._kv.get(device_key(device_uuid))
        except KeyNotFoundError:
            return None
        return DeviceRecord.model_validate_json(entry.value) if entry.value else None

    async def read_sensor(self, sensor_id: int) -> SensorIndexRecord | None:
        try:
            entry = await self._kv.get(sensor_key(sensor_id))
        except KeyNotFoundError:
            return None
        return SensorIndexRecord.model_validate_json(entry.value) if entry.value else None

    async def put_device(self, record: DeviceRecord) -> None:
        """Store ``record`` and the index entries of its sensors; drop index entries of sensors
        it no longer has. The caller has checked that no sensor is another device's."""
        previous = await self.read_device(record.device_uuid)
        for sensor in record.sensors:
            index = SensorIndexRecord(
                sensor_id=sensor.sensor_id,
                sensor_uuid=sensor.sensor_uuid,
                device_uuid=record.device_uuid,
                sensor_type=sensor.sensor_type,
            ).model_dump_json()
            await self._kv.put(sensor_key(sensor.sensor_id), index.encode())
            await self._kv.put(sensor_uuid_key(sensor.sensor_uuid), index.encode())
        if previous is not None:
            kept_ids = {s.sensor_id for s in record.sensors}
            kept_uuids = {s.sensor_uuid for s in record.sensors}
            for old in previous.sensors:
                if old.sensor_id not in kept_ids:
                    await self._kv.delete(sensor_key(old.sensor_id))
                if old.sensor_uuid not in kept_uuids:
                    await self._kv.delete(sensor_uuid_key(old.sensor_uuid))
        await self._kv.put(device_key(record.device_uuid), record.model_dump_json().encode())
        if record.serial and indexable_serial(record.serial):
            with contextlib.suppress(KeyWrongLastSequenceError):  # indexed already: first wins
                await self._kv.create(serial_key(record.serial), record.device_uuid.encode())
        self._cache.clear()

    async def device_uuid_by_serial(self, serial: str) -> str | None:
        """Uncached: the uuid the ``serial.<serial>`` index names, or None."""
        if not indexable_serial(serial):
            return None
        try:
            entry = await self._kv.get(serial_key(serial))
        except KeyNotFoundError:
            return None
        return entry.value.decode() if entry.value else None

    async def list_devices(self) -> list[DeviceRecord]:
        """Every registered device, by uuid."""
        keys = await kv_keys(self._kv)
        devices = []
        for key in sorted(k for k in keys if k.startswith("device.")):
            record = await self.read_device(key.removeprefix("device."))
            if record is not None:
                devices.append(record)
        return devices


class SensorDirectory(KvFollower):
    """An in-memory mirror of the ``sensor.<id>`` index, kept current by a KV watch.

    ``get(sensor_id)`` is a dict lookup (for the synchronous MQTT receive path); ``on_change``
    is called after every applied change (e.g. to forget cached topic routes)."""

    def __init__(self, kv: Any, on_change: Callable[[], None] | None = None) -> None:
        self._kv = kv
        self.on_change = on_change
        self._sensors: dict[int, SensorIndexRecord] = {}
        self._watcher: Any = None
        self._task: asyncio.Task[None] | None = None
        self.loaded = asyncio.Event()

    def get(self, sensor_id: int) -> SensorIndexRecord | None:
        return self._sensors.get(sensor_id)

    def __len__(self) -> int:
        return len(self._sensors)

    def apply(self, key: str, value: bytes | None, operation: str | None) -> None:
        try:
            sensor_id = int(key.removeprefix("sensor."))
        except ValueError:
            return
        if operation in _DELETE_OPERATIONS or not value:
            self._sensors.pop(sensor_id, None)
        else:
            try:
                self._sensors[sensor_id] = SensorIndexRecord.model_validate_json(value)
            except ValidationError as exc:
                log.warning("ignoring an unreadable registry entry", key=key, error=str(exc)[:300])
                return
        if self.on_change is not None:
            self.on_change()

    async def start(self, load_timeout: float = 10.0) -> None:
        """Watch ``sensor.*``; return once the current entries are loaded."""
        await self._start_watch(
            await self._kv.watch("sensor.*"), "sensor-directory-watch", load_timeout
        )

    def _apply_entry(self, entry: Any) -> None:
        self.apply(entry.key, entry.value, entry.operation)

    def _apply_failed(self, entry: Any) -> None:
        log.exception("failed to apply a registry entry", key=entry.key)
