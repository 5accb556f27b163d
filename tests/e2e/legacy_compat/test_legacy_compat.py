"""The legacy clients replayed against the real fleet (processes, local NATS, PostgreSQL,
Mosquitto), after the cut-over steps of gateway-http's README: every recorded request gets the
legacy reply shape, and the rows stored carry the classes the legacy system gave (sensor 501
with its imported per-sensor thresholds, the others with the legacy per-type rules).

The tests of this module run in order against one fleet (the delta rules compare a sensor's
reading with its previous one): packets, keyless packets, readings by id, MQTT, then the reads.
"""

from __future__ import annotations

import asyncio
import time
from datetime import datetime
from typing import Any

import httpx
import orjson
import pytest

from tests.e2e.fleet_process import FleetProcess
from tests.e2e.legacy_compat import recordings as rec
from tests.e2e.rows import rows_for
from tests.e2e.test_e2e_mqtt import mosquitto_pub, wait_mqtt_ready

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

LEGACY_KEY = {"X-API-Key": rec.LEGACY_API_KEY}


async def post(fleet: FleetProcess, path: str, body: Any, headers: dict[str, str]) -> Any:
    async with httpx.AsyncClient(base_url=fleet.url("gateway-http"), timeout=10) as client:
        return await client.post(path, json=body, headers=headers)


async def get(fleet: FleetProcess, path: str, headers: dict[str, str] | None = None) -> Any:
    async with httpx.AsyncClient(base_url=fleet.url("gateway-http"), timeout=10) as client:
        return await client.get(path, headers=headers or {})


def at(text: str) -> datetime:
    return datetime.fromisoformat(text)


async def test_1_simulator_packets_with_their_device_key(fleet: FleetProcess) -> None:
    key = {"X-Device-Key": rec.DEVICE_KEY}
    first = await post(fleet, "/ingest/packets", rec.PACKET, key)
    spike = await post(fleet, "/ingest/packets", rec.PACKET_SPIKE, key)
    assert (first.status_code, first.json()) == (200, {"inserted": 3})
    assert (spike.status_code, spike.json()) == (200, {"inserted": 2})


async def test_2_keyless_packets_and_wrong_keys_during_the_migration_window(
    fleet: FleetProcess,
) -> None:
    keyless = await post(fleet, "/ingest/packets", rec.PACKET_KEYLESS, {})
    unknown_keyless = await post(fleet, "/ingest/packets", rec.PACKET_UNKNOWN_DEVICE, {})
    wrong = {"X-Device-Key": "dev_guess"}
    known_wrong = await post(fleet, "/ingest/packets", rec.PACKET_KEYLESS, wrong)
    unknown_wrong = await post(fleet, "/ingest/packets", rec.PACKET_UNKNOWN_DEVICE, wrong)

    assert (keyless.status_code, keyless.json()) == (200, {"inserted": 1})
    assert (unknown_keyless.status_code, unknown_keyless.json()) == (
        401,
        {"detail": "missing X-Device-Key header"},
    )
    # no enumeration: the same status, body shape and headers for a registered and an unknown one
    assert (known_wrong.status_code, unknown_wrong.status_code) == (401, 401)
    assert known_wrong.json() == {"detail": f"X-Device-Key is not valid for device {rec.DEVICE}"}
    assert unknown_wrong.json() == {
        "detail": f"X-Device-Key is not valid for device {rec.UNKNOWN_DEVICE}"
    }
    assert set(known_wrong.headers) == set(unknown_wrong.headers)
    metrics = (await get(fleet, "/metrics")).text
    assert "gateway_http_legacy_keyless_packets_total 1.0" in metrics


async def test_3_single_and_bulk_readings_with_the_imported_legacy_api_key(
    fleet: FleetProcess,
) -> None:
    single = await post(fleet, "/ingest/readings", rec.SINGLE, LEGACY_KEY)
    bulk = await post(fleet, "/ingest/readings/bulk", rec.BULK, LEGACY_KEY)
    invalid = await post(fleet, "/ingest/readings", {"sensor_id": rec.TEMP}, LEGACY_KEY)
    no_key = await post(fleet, "/ingest/readings", rec.SINGLE, {})

    assert (single.status_code, single.json()) == (200, {"inserted": 1})
    assert (bulk.status_code, bulk.json()) == (200, {"inserted": 2})
    assert invalid.status_code == 422
    assert [(d["loc"], d["type"]) for d in invalid.json()["detail"]] == [
        (["body", "value"], "missing")
    ]
    assert no_key.status_code == 401 and "detail" in no_key.json()


async def test_4_legacy_mqtt_payloads(fleet: FleetProcess) -> None:
    await wait_mqtt_ready(fleet)
    for sensor, payload in rec.MQTT_PAYLOADS:
        mosquitto_pub(fleet, f"iot/sensors/{sensor}/readings", orjson.dumps(payload).decode())
    rows = await rows_for(fleet.postgres_dsn, rec.DEVICE, want=11)
    other = await rows_for(fleet.postgres_dsn, f"sensor-{rec.UNREGISTERED}", want=2)

    got = [(r["stream_id"], r["time"], r["value"], r["cls"], r["stream_type"], r["transport"])
           for r in rows]  # fmt: skip
    assert got == [
        # 501: its imported thresholds (15..30, step 2), not the type's (-40..125, step 10)
        ("501", at(rec.ts(0)), 20.0, "normal", "iot.temperature", "http"),
        ("501", at(rec.ts(1)), 23.0, "anomaly", "iot.temperature", "http"),  # WARNING: +3 > 2
        ("501", at(rec.ts(3)), 31.0, "critical", "iot.temperature", "http"),  # ALERT: > 30
        ("502", at(rec.ts(0)), 45.0, "normal", "iot.humidity", "http"),
        ("502", at(rec.ts(1)), 101.0, "critical", "iot.humidity", "http"),  # ALERT: > 100 %
        ("503", at(rec.ts(0)), 1013.25, "normal", "iot.pressure", "http"),
        ("503", at(rec.ts(2)), 1013.5, "normal", "iot.pressure", "http"),  # the keyless packet
        ("503", at(rec.ts(3)), 1013.75, "normal", "iot.pressure", "http"),
        ("503", at(rec.ts(4)), 1014.0, "normal", "iot.pressure", "mqtt"),
        ("503", at(rec.ts(5)), 1014.5, "normal", "iot.pressure", "mqtt"),
        ("503", at(rec.ts(6)), 1015.0, "normal", "iot.pressure", "mqtt"),  # extra fields ignored
    ]
    assert [(r["stream_id"], r["value"], r["cls"], r["stream_type"], r["transport"])
            for r in other] == [
        ("599", 7.5, "normal", None, "http"),
        ("599", 8.0, "normal", "iot.humidity", "mqtt"),  # its payload's sensor_type
    ]  # fmt: skip


async def test_5_sensor_status_and_device_readings_in_the_legacy_shapes(
    fleet: FleetProcess,
) -> None:
    status: Any = None
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        status = await get(fleet, f"/sensors/{rec.HUMID}/status", LEGACY_KEY)
        if status.status_code == 200 and status.json()["active_alert"]:
            break
        await asyncio.sleep(0.2)
    body = status.json()
    assert status.status_code == 200
    assert (body["sensor_id"], body["device_uuid"], body["sensor_uuid"], body["state"]) == (
        rec.HUMID,
        rec.DEVICE,
        rec.HUMID_UUID,
        "ALERT",
    )
    assert (body["latest"]["value"], body["latest"]["classification"]) == (101.0, "ALERT")
    assert body["active_alert"]["rule"] == "physical_range"

    readings = await get(fleet, f"/devices/{rec.DEVICE}/readings?limit=3", LEGACY_KEY)
    assert readings.status_code == 200
    listed = readings.json()
    reasons = [r.pop("reason") for r in listed["readings"]]
    assert all(isinstance(r, str) and r for r in reasons)  # the classifier's sentence
    assert listed == {
        "device_uuid": rec.DEVICE,
        "readings": [
            {"sensor_id": 503, "sensor_uuid": rec.PRESSURE_UUID, "value": 1015.0,
             "timestamp": rec.ts(6), "classification": "ML_PREDICTION", "cls": "normal"},
            {"sensor_id": 503, "sensor_uuid": rec.PRESSURE_UUID, "value": 1014.5,
             "timestamp": rec.ts(5), "classification": "ML_PREDICTION", "cls": "normal"},
            {"sensor_id": 503, "sensor_uuid": rec.PRESSURE_UUID, "value": 1014.0,
             "timestamp": rec.ts(4), "classification": "ML_PREDICTION", "cls": "normal"},
        ],
    }  # fmt: skip
    assert (await get(fleet, f"/devices/{rec.DEVICE}/readings")).status_code == 401


async def test_6_every_ops_probe_answers_from_the_fleet(fleet: FleetProcess) -> None:
    await wait_mqtt_ready(fleet)
    replies = {path: await get(fleet, path) for path in rec.OPS_PROBES}
    assert {p: r.status_code for p, r in replies.items()} == {p: 200 for p in rec.OPS_PROBES}
    assert replies["/health"].json() == {"status": "ok"}
    assert replies["/health/postgres"].json()["connected"] is True
    assert replies["/ingest/health"].json()["checks"] == {
        "nats": True,
        "stream": True,
        "device_registry": True,
    }
    assert replies["/ingest/health"].json()["device_auth_mode"] == "migration"
    mqtt = replies["/mqtt/health"].json()
    assert (mqtt["status"], mqtt["connected"]) == ("ok", True)
    assert [i["url"] for i in mqtt["instances"]] == [fleet.url("gateway-mqtt")]
    stats = replies["/mqtt/stats"].json()
    assert stats["messages_received"] >= len(rec.MQTT_PAYLOADS)
    assert stats["points_published"] >= len(rec.MQTT_PAYLOADS)
    assert stats["connected"] is True
    resilience = replies["/resilience/health"].json()
    assert resilience["circuit_breakers"] == {"writer-postgres": "CLOSED"}
    assert resilience["dlq"]["depth"] == 0
    assert resilience["status"] == "ok"

    anonymous = await get(fleet, "/diagnostics")
    diagnostics = await get(fleet, "/diagnostics", LEGACY_KEY)
    assert anonymous.status_code == 401
    assert diagnostics.status_code == 200
    assert diagnostics.json()["mqtt"]["connected"] is True
    assert diagnostics.json()["postgres"]["connected"] is True
    assert diagnostics.json()["settings"]["device_auth_mode"] == "migration"
