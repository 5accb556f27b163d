"""MQTT topic + payload → a ``DataPoint`` with its (domain, source), or a ``Rejection`` (no MQTT,
no NATS here).

Topics (after the optional topic prefix):

* ``<domain>/<source_id>/<stream_id>/data`` — universal; domain ``iot`` is refused there.
* ``iot/sensors/<sensor_id>/readings`` — legacy IoT; ``sensor_id`` is an integer, the point gets
  domain ``iot``, ``stream_id`` = the id as text and ``legacy.sensor_id``. When the device
  registry knows the sensor (``resolve_sensor``), ``source_id`` is its device's uuid,
  ``stream_type`` = ``iot.<sensor_type>`` (so the IoT classification defaults apply) and
  ``legacy`` carries the device and sensor uuids too; otherwise ``source_id`` = ``sensor-<id>``.

Payload: a JSON object ``{"value": 45.2, "timestamp": ..., "metadata": {}, "sequence": 1,
"stream_type": "..."}``; only ``value`` is required, a missing ``timestamp`` means receive time.
Unknown fields are refused on universal topics.

On the legacy topic the payload is read as the legacy receiver read it (seed 001 §1.6, its
``MQTTPayload``: ``sensor_id``/``sensorId``, ``value``, ``timestamp``, optional ``sensor_type``,
``device_uuid``): the fields it used are used, every other field is ignored (not refused):

* ``value``, ``timestamp`` (ISO 8601 or epoch seconds; missing = receive time), ``metadata``,
  ``sequence`` — as on universal topics;
* ``sensor_id`` or ``sensorId`` (integer, or its decimal text) — must be the topic's id: a
  payload naming another sensor is refused (``sensor_id``) rather than written to that sensor,
  so a broker ACL on ``iot/sensors/<id>/readings`` keeps meaning what it says;
* ``sensor_type`` — the type of a sensor the registry does not know: ``stream_type`` becomes
  ``iot.<sensor_type>`` so the legacy per-type rules classify it (for a registered sensor the
  registry's type wins, as the legacy database's did);
* ``device_uuid`` — for a sensor the registry does not know, recorded in ``legacy.device_uuid``
  when it is a uuid (``source_id`` stays ``sensor-<id>``); ignored for a registered sensor.
A rejection's ``code`` is a bounded metrics label (the field of the first problem); its
``reason`` names every problem. The value/timestamp/metadata/sequence checks are the ones every
gateway shares (``tributary_ingest.points``: same rules, same wording).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from tributary_contracts import DataPoint, LegacyIds
from tributary_ingest.points import (
    INT64,
    IOT_DOMAIN,
    build_point,
    check_domain,
    check_identifier,
    check_measurement,
    clip,
    duplicate_problem,
    json_type,
    parse_json,
    unknown_fields,
)
from tributary_runtime.devices import (
    SensorIndexRecord,
    canonical_uuid,
    stream_type_of,
    unregistered_source_id,
)

UNIVERSAL_SUFFIX = "data"
LEGACY_TOPIC = ("iot", "sensors", "<sensor_id>", "readings")
POINT_FIELDS = ("value", "timestamp", "metadata", "sequence", "stream_type")
LEGACY_FIELDS = (
    "value",
    "timestamp",
    "metadata",
    "sequence",
    "sensor_id",
    "sensorId",
    "sensor_type",
    "device_uuid",
)
"""What the legacy receiver read of a payload; anything else on the legacy topic is ignored."""
_POINT_FIELD_SET = frozenset(POINT_FIELDS)

# Bounded set of rejection codes (the metrics label ``reason``).
REJECTION_CODES = (
    "topic",  # not one of the two topic shapes (or outside the topic prefix)
    "domain",  # domain level does not match the domain pattern
    "iot_domain",  # domain iot on a universal topic
    "source_id",
    "stream_id",
    "sensor_id",  # legacy sensor id is not an integer
    "payload_size",
    "json",  # not UTF-8 JSON
    "payload",  # JSON, but not an object
    "value",
    "timestamp",
    "metadata",
    "sequence",
    "stream_type",
    "unknown_field",
)


@dataclass(frozen=True, slots=True)
class Route:
    """Where a topic's points go: (domain, source, stream) plus legacy ids (and, for a
    registered legacy sensor, its stream type)."""

    domain: str
    source_id: str
    stream_id: str
    legacy: LegacyIds | None = None
    stream_type: str | None = None


ResolveSensor = Callable[[int], SensorIndexRecord | None]
"""The device registry's answer for a legacy integer sensor id (None: not registered)."""


@dataclass(frozen=True, slots=True)
class Rejection:
    """A message that was not accepted, with why (ids as far as they were readable)."""

    code: str
    reason: str
    domain: str | None = None
    source_id: str | None = None
    stream_id: str | None = None


def parse_topic(
    topic: str, prefix: str = "", resolve_sensor: ResolveSensor | None = None
) -> Route | Rejection:
    """The ``Route`` of a topic (``prefix`` without trailing slash), or why it has none."""
    if prefix:
        if not topic.startswith(prefix + "/"):
            return Rejection("topic", f"topic {clip(topic)!r} is outside the prefix {prefix!r}")
        topic = topic[len(prefix) + 1 :]
    levels = topic.split("/")
    if (
        len(levels) == 4
        and levels[0] == IOT_DOMAIN
        and levels[1] == "sensors"
        and (levels[3] == "readings")
    ):
        return _legacy_route(levels[2], resolve_sensor)
    if len(levels) != 4 or levels[3] != UNIVERSAL_SUFFIX or not all(levels):
        return Rejection(
            "topic",
            f"topic {clip(topic)!r} is neither <domain>/<source_id>/<stream_id>/data "
            "nor iot/sensors/<sensor_id>/readings",
        )
    domain, source_id, stream_id = levels[0], levels[1], levels[2]
    if problem := check_domain(domain):
        return Rejection("domain", problem)
    if domain == IOT_DOMAIN:
        return Rejection(
            "iot_domain",
            "domain 'iot' is not accepted on <domain>/<source_id>/<stream_id>/data: "
            "publish IoT readings to iot/sensors/<sensor_id>/readings",
            domain,
            source_id,
            stream_id,
        )
    for name, value in (("source_id", source_id), ("stream_id", stream_id)):
        problem = check_identifier(value, name)
        if problem:
            return Rejection(name, problem, domain)
    return Route(domain, source_id, stream_id)


def _legacy_route(sensor: str, resolve_sensor: ResolveSensor | None) -> Route | Rejection:
    if not (sensor.isascii() and sensor.isdigit()) or int(sensor) >= INT64:
        return Rejection(
            "sensor_id",
            f"sensor_id {clip(sensor)!r} in iot/sensors/<sensor_id>/readings must be a "
            "non-negative integer",
            IOT_DOMAIN,
        )
    sensor_id = int(sensor)
    known = resolve_sensor(sensor_id) if resolve_sensor is not None else None
    if known is None:
        return Route(
            IOT_DOMAIN,
            unregistered_source_id(sensor_id),
            str(sensor_id),
            LegacyIds(sensor_id=sensor_id),
        )
    return Route(
        IOT_DOMAIN,
        known.device_uuid,
        str(sensor_id),
        LegacyIds(
            sensor_id=sensor_id, device_uuid=known.device_uuid, sensor_uuid=known.sensor_uuid
        ),
        known.stream_type,
    )


def parse_payload(payload: bytes) -> Any:
    """``parse_json``: orjson first; the standard library as fallback so ``NaN``/``Infinity``
    (which Python's ``json.dumps`` emits) become a ``value`` rejection rather than "not JSON";
    an object naming a key twice comes back as ``DuplicateKeys``."""
    return parse_json(payload, what="payload")  # MalformedJson is a ValueError


def normalize_message(
    route: Route, payload: bytes, received_at: datetime, max_payload_bytes: int
) -> tuple[DataPoint, bool] | Rejection:
    """``(point, had_timestamp)`` of one message on ``route``'s topic, or why it was rejected."""
    ids = (route.domain, route.source_id, route.stream_id)
    if len(payload) > max_payload_bytes:
        return Rejection(
            "payload_size",
            f"payload is {len(payload)} bytes; at most {max_payload_bytes} bytes",
            *ids,
        )
    try:
        raw = parse_payload(payload)
    except (ValueError, RecursionError) as exc:
        return Rejection("json", f"payload is not UTF-8 JSON: {clip(str(exc), 120)}", *ids)
    if not isinstance(raw, dict):
        return Rejection(
            "payload",
            f'payload must be a JSON object like {{"value": 1.5}}, got {json_type(raw)}',
            *ids,
        )
    problems: list[tuple[str, str]] = []  # (code, reason)
    if problem := duplicate_problem(raw, "the payload"):
        problems.append(("duplicate_key", problem))

    value, ts, metadata, sequence = check_measurement(raw, received_at, problems)

    stream_type = None
    legacy = route.legacy
    if legacy is None:
        stream_type = raw.get("stream_type")
        if stream_type is not None:
            problem = check_identifier(stream_type, "stream_type")
            if problem:
                problems.append(("stream_type", problem))
        if not _POINT_FIELD_SET.issuperset(raw):
            problems.append(("unknown_field", unknown_fields(raw, _POINT_FIELD_SET, POINT_FIELDS)))
    else:
        stream_type, legacy = _legacy_payload(route, legacy, raw, problems)

    if problems:
        return Rejection(problems[0][0], "; ".join(r for _, r in problems), *ids)
    return (
        build_point(
            {
                "stream_id": route.stream_id,
                "value": value,
                "ts": ts,
                "stream_type": stream_type,
                "sequence": sequence,
                "metadata": metadata,
                "legacy": legacy,
            }
        ),
        raw.get("timestamp") is not None,
    )


def _legacy_payload(
    route: Route, legacy: LegacyIds, raw: dict[str, Any], problems: list[tuple[str, str]]
) -> tuple[str | None, LegacyIds]:
    """``(stream_type, legacy ids)`` of a legacy-topic payload (module docstring)."""
    for name in ("sensor_id", "sensorId"):
        sensor = raw.get(name)
        if sensor is None:
            continue
        number = sensor if isinstance(sensor, int) and not isinstance(sensor, bool) else None
        if isinstance(sensor, str) and sensor.strip().isdigit():
            number = int(sensor.strip())
        if number != legacy.sensor_id:
            problems.append(
                (
                    "sensor_id",
                    f"{name} {clip(str(sensor), 32)!r} differs from the topic's {route.stream_id}",
                )
            )
    if route.stream_type is not None or legacy.device_uuid is not None:
        return route.stream_type, legacy  # a registered sensor: the registry's ids and type
    stream_type = None
    sensor_type = raw.get("sensor_type")
    if isinstance(sensor_type, str) and sensor_type.strip():
        stream_type = stream_type_of(sensor_type)
        problem = check_identifier(stream_type, "sensor_type")
        if problem:
            problems.append(("stream_type", problem))
    device_uuid = raw.get("device_uuid")
    if isinstance(device_uuid, str):
        try:
            legacy = LegacyIds(sensor_id=legacy.sensor_id, device_uuid=canonical_uuid(device_uuid))
        except ValueError:
            pass  # the legacy receiver never checked it; an unreadable one is ignored
    return stream_type, legacy


def with_ts(point: DataPoint, ts: datetime) -> DataPoint:
    """``point`` with another event time (a redelivered timestamp-less message keeps its first)."""
    return build_point({**point.__dict__, "ts": ts})
