"""Requests in the shapes the legacy clients sent them (seeds 002 and 004), replayed by the
compatibility suite against the fleet: the simulator's packets (``iot_simulation`` posts
``/ingest/packets``), the legacy single/bulk readings by integer ``sensor_id``, the MQTT payloads
of ``iot/sensors/<id>/readings`` (seed 001 §1.6 ``MQTTPayload``), and every probe the
dashboards poll. Ids are fixed so expected rows can be written out by hand."""

from __future__ import annotations

from typing import Any

DEVICE = "9d2b5a3e-1c4f-4e8a-b7d6-0a1b2c3d4e5f"
UNKNOWN_DEVICE = "9d2b5a3e-1c4f-4e8a-b7d6-ffffffffffff"
TEMP_UUID = "6a1f0c2e-3b4d-4e5f-8a9b-0c1d2e3f4a01"
HUMID_UUID = "6a1f0c2e-3b4d-4e5f-8a9b-0c1d2e3f4a02"
PRESSURE_UUID = "6a1f0c2e-3b4d-4e5f-8a9b-0c1d2e3f4a03"
TEMP, HUMID, PRESSURE = 501, 502, 503
UNREGISTERED = 599
"""A sensor id the registry does not know (legacy readings by id were accepted for it)."""

LEGACY_API_KEY = "iot-legacy-global-key-7d1e"
"""The legacy X-API-Key value, imported with `tributary keys import` (its SHA-256 only)."""

DEVICE_KEY = "dev_simulator-501-key"
DEVICES_CSV = f"device_uuid,serial,device_key,enabled\n{DEVICE},SIM-501,{DEVICE_KEY},1\n"
SENSORS_CSV = (
    "sensor_uuid,sensor_id,device_uuid,sensor_type\n"
    f"{TEMP_UUID},{TEMP},{DEVICE},temperature\n"
    f"{HUMID_UUID},{HUMID},{DEVICE},humidity\n"
    f"{PRESSURE_UUID},{PRESSURE},{DEVICE},pressure\n"
)
ALERT_THRESHOLDS_CSV = "id,sensor_id,min_value,max_value,is_active\n1,501,15,30,1\n"
DELTA_THRESHOLDS_CSV = "id,sensor_id,abs_delta,rel_delta,is_active\n1,501,2,,1\n"
"""Sensor 501's own legacy thresholds: 15..30 °C and 2 °C per step (the type default would be
-40..125 and 10)."""


def ts(minute: int, second: int = 0) -> str:
    return f"2026-02-25T22:{minute:02d}:{second:02d}Z"


# POST /ingest/packets (X-Device-Key): the simulator's packet
PACKET = {
    "device_uuid": DEVICE,
    "readings": [
        {"sensor_uuid": TEMP_UUID, "value": 20.0, "timestamp": ts(0)},
        {"sensor_uuid": HUMID_UUID, "value": 45.0, "timestamp": ts(0)},
        {"sensor_uuid": PRESSURE_UUID, "value": 1013.25, "timestamp": ts(0)},
    ],
}
# the same device later: 501 +3 °C (a spike for its imported 2 °C limit), 502 above 100 %
PACKET_SPIKE = {
    "device_uuid": DEVICE,
    "readings": [
        {"sensor_uuid": TEMP_UUID, "value": 23.0, "timestamp": ts(1)},
        {"sensor_uuid": HUMID_UUID, "value": 101.0, "timestamp": ts(1)},
    ],
}
# a keyless packet (devices that never sent X-Device-Key; DEVICE_AUTH_ENABLED=0 before)
PACKET_KEYLESS = {
    "device_uuid": DEVICE,
    "readings": [{"sensor_uuid": PRESSURE_UUID, "value": 1013.5, "timestamp": ts(2)}],
}
PACKET_UNKNOWN_DEVICE = {
    "device_uuid": UNKNOWN_DEVICE,
    "readings": [{"sensor_uuid": TEMP_UUID, "value": 1.0, "timestamp": ts(2)}],
}
# POST /ingest/readings and /ingest/readings/bulk (X-API-Key), by integer sensor_id
SINGLE = {"sensor_id": TEMP, "value": 31.0, "timestamp": ts(3)}  # above its imported 30 °C
BULK = {
    "readings": [
        {"sensor_id": PRESSURE, "value": 1013.75, "timestamp": ts(3)},
        {"sensor_id": UNREGISTERED, "value": 7.5, "timestamp": ts(3)},
    ]
}
# MQTT iot/sensors/<id>/readings: (sensor id of the topic, payload) in the MQTTPayload shapes
MQTT_PAYLOADS: list[tuple[int, dict[str, Any]]] = [
    (PRESSURE, {"sensor_id": PRESSURE, "value": 1014.0, "timestamp": ts(4)}),
    (PRESSURE, {"sensorId": PRESSURE, "value": 1014.5, "timestamp": 1772057100,  # 22:05
                "sensor_type": "pressure", "device_uuid": DEVICE}),
    (PRESSURE, {"sensor_id": str(PRESSURE), "value": 1015.0, "timestamp": ts(6),
                "unit": "hPa", "rssi": -70, "firmware": "2.1.0"}),
    (UNREGISTERED, {"sensorId": UNREGISTERED, "value": 8.0, "timestamp": ts(4),
                    "sensor_type": "humidity", "device_uuid": DEVICE}),
]  # fmt: skip

OPS_PROBES = ["/health", "/health/postgres", "/ingest/health", "/mqtt/health", "/mqtt/stats",
              "/resilience/health"]  # fmt: skip
"""The unauthenticated probes of seed 002's table (``/diagnostics`` needs an API key)."""
