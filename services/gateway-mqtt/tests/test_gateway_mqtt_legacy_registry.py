"""The legacy topic ``iot/sensors/<id>/readings`` resolved through the IoT device registry: the
point gets its device as source, ``iot.<sensor_type>`` as stream type and the legacy uuids."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from typing import Any

import pytest

from gateway_mqtt.normalize import Route, normalize_message, parse_topic
from tributary_contracts import DEVICES_BUCKET, LegacyIds
from tributary_runtime.devices import (
    DeviceRecord,
    DeviceRegistry,
    SensorIndexRecord,
    SensorRecord,
)

DEVICE = "0f6c1b2e-7a51-4c1c-9b1a-3e0b0e7f1a11"
SENSOR = "5b0e3a4e-2a7d-4f55-9a4b-9d1c9f0e0a01"
T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)
KNOWN = {
    17: SensorIndexRecord(
        sensor_id=17, sensor_uuid=SENSOR, device_uuid=DEVICE, sensor_type="Temperature"
    )
}


def test_a_registered_sensor_routes_to_its_device_with_the_iot_stream_type() -> None:
    route = parse_topic("iot/sensors/17/readings", "", KNOWN.get)
    assert route == Route(
        "iot",
        DEVICE,
        "17",
        LegacyIds(sensor_id=17, device_uuid=DEVICE, sensor_uuid=SENSOR),
        "iot.temperature",
    )
    assert isinstance(route, Route)
    result = normalize_message(route, b'{"value": 21.5, "timestamp": 1772053200}', T0, 4096)
    assert isinstance(result, tuple)
    point, _ = result
    assert (point.stream_id, point.stream_type, point.legacy) == (
        "17",
        "iot.temperature",
        LegacyIds(sensor_id=17, device_uuid=DEVICE, sensor_uuid=SENSOR),
    )


def test_an_unregistered_sensor_keeps_the_sensor_source() -> None:
    route = parse_topic("iot/sensors/18/readings", "", KNOWN.get)
    assert route == Route("iot", "sensor-18", "18", LegacyIds(sensor_id=18))


def test_a_stream_type_in_a_legacy_payload_is_still_an_unknown_field() -> None:
    route = parse_topic("iot/sensors/17/readings", "", KNOWN.get)
    assert isinstance(route, Route)
    result = normalize_message(route, b'{"value": 1, "stream_type": "x"}', T0, 4096)
    assert not isinstance(result, tuple) and result.code == "unknown_field"


@pytest.mark.integration
async def test_a_sensor_registered_while_running_is_resolved(gateway: Any, mq: Any) -> None:
    await mq.mosquitto_pub(gateway.topic("iot/sensors/17/readings"), '{"value": 1, "timestamp": 1}')
    [before] = mq.batches(await gateway.raw(1))
    assert before.source_id == "sensor-17"

    kv = await gateway.js.key_value(gateway.ns.bucket(DEVICES_BUCKET))
    await DeviceRegistry(kv).put_device(
        DeviceRecord(
            device_uuid=DEVICE,
            sensors=[SensorRecord(sensor_uuid=SENSOR, sensor_id=17, sensor_type="temperature")],
        )
    )
    await asyncio.sleep(0.3)  # the watch delivers the change (the route cache is dropped)
    await mq.mosquitto_pub(
        gateway.topic("iot/sensors/17/readings"), '{"value": 21.5, "timestamp": 1772053200}'
    )

    after = mq.batches(await gateway.raw(2))[1]
    assert (after.domain, after.source_id) == ("iot", DEVICE)
    [point] = after.points
    assert (point.stream_id, point.value, point.ts, point.stream_type, point.legacy) == (
        "17",
        21.5,
        T0,
        "iot.temperature",
        LegacyIds(sensor_id=17, device_uuid=DEVICE, sensor_uuid=SENSOR),
    )
