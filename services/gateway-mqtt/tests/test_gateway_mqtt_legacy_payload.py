"""Golden table: every payload shape the legacy receiver took on ``iot/sensors/<id>/readings``
(seed 001 §1.6, ``MQTTPayload``: ``sensor_id`` / ``sensorId``, ``value``, ``timestamp``,
optional ``sensor_type`` and ``device_uuid``) → exactly the point the fleet publishes, for a
sensor the registry knows and for one it does not. Fields the legacy receiver ignored are
ignored here too; the ones it used are used."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from gateway_mqtt.normalize import Rejection, normalize_message, parse_topic
from tributary_contracts import LegacyIds
from tributary_runtime.devices import SensorIndexRecord

RECEIVED = datetime(2026, 2, 25, 21, 5, tzinfo=UTC)
T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)
DEVICE = "0f6c1b2e-7a51-4c1c-9b1a-3e0b0e7f1a11"
SENSOR_UUID = "5b0e3a4e-2a7d-4f55-9a4b-9d1c9f0e0a01"
OTHER_DEVICE = "22222222-2222-4222-8222-222222222222"
REGISTRY = {
    17: SensorIndexRecord(
        sensor_id=17, sensor_uuid=SENSOR_UUID, device_uuid=DEVICE, sensor_type="temperature"
    )
}
REGISTERED_IDS = LegacyIds(sensor_id=17, device_uuid=DEVICE, sensor_uuid=SENSOR_UUID)

# (case, topic sensor, payload, expected (source_id, value, ts, stream_type, legacy ids))
GOLDEN: list[tuple[str, int, dict[str, Any], tuple[str, float, datetime, Any, LegacyIds]]] = [
    (
        "REQUIRED_FIELDS only (sensor_id, value, timestamp ISO)",
        17,
        {"sensor_id": 17, "value": 21.5, "timestamp": "2026-02-25T21:00:00Z"},
        (DEVICE, 21.5, T0, "iot.temperature", REGISTERED_IDS),
    ),
    (
        "camelCase sensorId, epoch seconds",
        17,
        {"sensorId": 17, "value": 22, "timestamp": 1772053200},
        (DEVICE, 22.0, T0, "iot.temperature", REGISTERED_IDS),
    ),
    (
        "sensor id as text",
        17,
        {"sensor_id": "17", "value": 21.5, "timestamp": "2026-02-25T21:00:00+00:00"},
        (DEVICE, 21.5, T0, "iot.temperature", REGISTERED_IDS),
    ),
    (
        "all OPTIONAL_FIELDS of a registered sensor: the registry's type and device win",
        17,
        {
            "sensor_id": 17, "value": 21.5, "timestamp": "2026-02-25T21:00:00Z",
            "sensor_type": "humidity", "device_uuid": OTHER_DEVICE,
        },
        (DEVICE, 21.5, T0, "iot.temperature", REGISTERED_IDS),
    ),
    (
        "no timestamp: receive time (the simulators' minimal shape)",
        17,
        {"value": 21.5},
        (DEVICE, 21.5, RECEIVED, "iot.temperature", REGISTERED_IDS),
    ),
    (
        "fields the legacy receiver ignored are ignored",
        17,
        {
            "sensor_id": 17, "value": 21.5, "timestamp": 1772053200, "unit": "C",
            "quality": "good", "rssi": -71, "stream_type": "cpu", "firmware": {"v": 3},
        },
        (DEVICE, 21.5, T0, "iot.temperature", REGISTERED_IDS),
    ),
    (
        "unregistered sensor with sensor_type and device_uuid",
        42,
        {
            "sensor_id": 42, "value": 101.0, "timestamp": 1772053200,
            "sensor_type": "Humidity", "device_uuid": OTHER_DEVICE.upper(),
        },
        ("sensor-42", 101.0, T0, "iot.humidity", LegacyIds(sensor_id=42, device_uuid=OTHER_DEVICE)),
    ),
    (
        "unregistered sensor, unreadable device_uuid ignored",
        42,
        {"sensorId": 42, "value": 1.5, "timestamp": 1772053200, "device_uuid": "dev-7"},
        ("sensor-42", 1.5, T0, None, LegacyIds(sensor_id=42)),
    ),
    (
        "unregistered sensor, bare reading",
        42,
        {"value": -3, "timestamp": 1772053200},
        ("sensor-42", -3.0, T0, None, LegacyIds(sensor_id=42)),
    ),
]  # fmt: skip


@pytest.mark.parametrize(
    ("sensor", "payload", "expected"), [c[1:] for c in GOLDEN], ids=[c[0] for c in GOLDEN]
)
def test_legacy_payload_shapes_become_the_same_point(
    sensor: int, payload: dict[str, Any], expected: tuple[Any, ...]
) -> None:
    route = parse_topic(f"iot/sensors/{sensor}/readings", "", REGISTRY.get)
    assert not isinstance(route, Rejection)
    result = normalize_message(route, orjson.dumps(payload), RECEIVED, 16384)
    assert not isinstance(result, Rejection), result
    point, _ = result
    assert (route.source_id, point.value, point.ts, point.stream_type, point.legacy) == expected
    assert (route.domain, point.stream_id) == ("iot", str(sensor))


@pytest.mark.parametrize(
    ("payload", "code", "words"),
    [
        ({"sensor_id": 18, "value": 1}, "sensor_id", "sensor_id '18' differs from the topic's 17"),
        ({"sensorId": "x", "value": 1}, "sensor_id", "sensorId 'x' differs"),
        ({"sensor_id": 17}, "value", "value is required"),
        ({"sensor_id": 17, "value": "21.5"}, "value", "must be a number"),
        ({"sensor_id": 17, "value": 1, "timestamp": "ayer"}, "timestamp", "not ISO 8601"),
    ],
)
def test_what_the_legacy_receiver_could_not_use_is_refused_with_its_reason(
    payload: dict[str, Any], code: str, words: str
) -> None:
    route = parse_topic("iot/sensors/17/readings", "", REGISTRY.get)
    assert not isinstance(route, Rejection)
    result = normalize_message(route, orjson.dumps(payload), RECEIVED, 16384)
    assert isinstance(result, Rejection)
    assert (result.code, result.source_id) == (code, DEVICE)
    assert words in result.reason
