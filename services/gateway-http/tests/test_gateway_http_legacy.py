"""The legacy IoT endpoints against the real local NATS: replies in the legacy shapes, refusals
with their reasons counted, and the points really on the bus with the IoT ids."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import nats
import pytest
from prometheus_client import REGISTRY

from gateway_http.sensor_status import LEGACY_CLASS, status_body
from tributary_contracts import DEFAULT_PARTITIONS, DEVICES_BUCKET, DP_RAW, LegacyIds, partition_of
from tributary_runtime.devices import (
    DeviceRecord,
    DeviceRegistry,
    SensorIndexRecord,
    SensorRecord,
    hash_device_key,
)

pytestmark = pytest.mark.integration

DEVICE = "0f6c1b2e-7a51-4c1c-9b1a-3e0b0e7f1a11"
OTHER = "22222222-2222-4222-8222-222222222222"
TEMP = "5b0e3a4e-2a7d-4f55-9a4b-9d1c9f0e0a01"
HUMID = "5b0e3a4e-2a7d-4f55-9a4b-9d1c9f0e0a02"
FOREIGN = "5b0e3a4e-2a7d-4f55-9a4b-9d1c9f0e0a03"
KEY = "dev_the-device-key"
UNKNOWN = "33333333-3333-4333-8333-333333333333"
TS = "2026-02-25T21:00:00Z"
T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)


def refused(reason: str) -> float:
    return REGISTRY.get_sample_value("gateway_http_legacy_refused_total", {"reason": reason}) or 0.0


@pytest.fixture
async def iot(gateway: Any) -> AsyncIterator[Any]:
    """The gateway with two devices registered: DEVICE (sensors 17, 18) and OTHER (19)."""
    kv = await gateway.js.key_value(gateway.ns.bucket(DEVICES_BUCKET))
    registry = DeviceRegistry(kv, cache_seconds=0)
    await registry.put_device(
        DeviceRecord(
            device_uuid=DEVICE,
            serial="SN-1",
            key_sha256=hash_device_key(KEY),
            sensors=[
                SensorRecord(sensor_uuid=TEMP, sensor_id=17, sensor_type="temperature"),
                SensorRecord(sensor_uuid=HUMID, sensor_id=18, sensor_type="humidity"),
            ],
        )
    )
    await registry.put_device(
        DeviceRecord(
            device_uuid=OTHER,
            key_sha256=hash_device_key("other"),
            enabled=False,
            sensors=[SensorRecord(sensor_uuid=FOREIGN, sensor_id=19, sensor_type="co2")],
        )
    )
    yield gateway


def packet(*readings: tuple[str, Any], device: str = DEVICE) -> dict[str, Any]:
    return {
        "device_uuid": device,
        "readings": [{"sensor_uuid": s, "value": v, "timestamp": TS} for s, v in readings],
    }


async def post_packet(gw: Any, body: Any, key: str | None = KEY) -> Any:
    headers = {"X-Device-Key": key} if key is not None else {}
    return await gw.client.post("/ingest/packets", json=body, headers=headers)


async def test_packet_is_published_with_the_iot_ids_and_answers_inserted(
    iot: Any, read_batches: Any
) -> None:
    reply = await post_packet(iot, packet((TEMP, 21.5), (HUMID.upper(), 40)))

    assert (reply.status_code, reply.json()) == (200, {"inserted": 2})
    [raw] = await read_batches()
    partition = partition_of("iot", DEVICE, DEFAULT_PARTITIONS)
    assert raw.subject == iot.ns.raw_partition_subject("iot", partition)
    batch = raw.batch
    assert (batch.domain, batch.source_id, batch.transport) == ("iot", DEVICE, "http")
    temp = LegacyIds(sensor_id=17, device_uuid=DEVICE, sensor_uuid=TEMP)
    humid = LegacyIds(sensor_id=18, device_uuid=DEVICE, sensor_uuid=HUMID)
    assert [(p.stream_id, p.value, p.ts, p.stream_type, p.legacy) for p in batch.points] == [
        ("17", 21.5, T0, "iot.temperature", temp),
        ("18", 40.0, T0, "iot.humidity", humid),
    ]


@pytest.mark.parametrize(
    ("body", "key", "status", "reason", "detail"),
    [
        (packet((TEMP, 1)), "wrong", 401, "wrong_device_key",
         f"X-Device-Key is not valid for device {DEVICE}"),
        (packet((TEMP, 1)), None, 401, "missing_device_key", "missing X-Device-Key header"),
        (packet((FOREIGN, 1), device=OTHER), "other", 401, "disabled_device",
         f"device {OTHER} is disabled"),
        (packet((TEMP, 1), device=UNKNOWN), KEY, 401, "unknown_device",
         f"X-Device-Key is not valid for device {UNKNOWN}"),
        (packet((TEMP, 1), ("44444444-4444-4444-8444-444444444444", 2)), KEY, 404, "unknown_sensor",
         "readings[1]: sensor 44444444-4444-4444-8444-444444444444 is not registered"),
        (packet((FOREIGN, 1)), KEY, 403, "foreign_sensor",
         f"readings[0]: sensor {FOREIGN} is not a sensor of device {DEVICE}"),
    ],
)  # fmt: skip
async def test_refused_packets_name_the_reason_are_counted_and_publish_nothing(
    iot: Any, read_stream: Any, body: Any, key: str | None, status: int, reason: str, detail: str
) -> None:
    before = refused(reason)
    reply = await post_packet(iot, body, key)
    assert (reply.status_code, reply.json()) == (status, {"detail": detail})
    assert refused(reason) == before + 1
    assert await read_stream(DP_RAW) == []


async def test_a_sensor_uuid_that_is_no_uuid_gets_422(iot: Any, read_stream: Any) -> None:
    reply = await post_packet(iot, packet((TEMP, 1), ("sensor-1", 2)))
    assert reply.status_code == 422
    [detail] = reply.json()["detail"]
    assert (detail["loc"], detail["type"]) == (
        ["body", "readings", 1, "sensor_uuid"],
        "uuid_parsing",
    )
    assert await read_stream(DP_RAW) == []


async def test_invalid_packet_gets_fastapi_shaped_422(iot: Any, read_stream: Any) -> None:
    body = {"device_uuid": "nope", "readings": [{"sensor_uuid": TEMP, "value": "NaN"}]}
    reply = await post_packet(iot, body)
    assert reply.status_code == 422
    detail = reply.json()["detail"]
    assert [(d["loc"], d["type"]) for d in detail] == [
        (["body", "device_uuid"], "uuid_parsing"),
        (["body", "readings", 0, "value"], "value_error"),
    ]
    assert "value must be a finite number, got 'NaN'" in detail[1]["msg"]
    bad_json = await iot.client.post("/ingest/packets", content=b"{", headers={"X-Device-Key": KEY})
    assert bad_json.status_code == 422 and bad_json.json()["detail"][0]["type"] == "json_invalid"
    assert await read_stream(DP_RAW) == []


async def test_single_and_bulk_readings_by_sensor_id(iot: Any, read_batches: Any) -> None:
    one = await iot.client.post(
        "/ingest/readings",
        json={"sensor_id": 17, "value": 21.5, "timestamp": 1772053200},
        headers={"X-API-Key": iot.key},
    )
    bulk = await iot.client.post(
        "/ingest/readings/bulk",
        json={
            "readings": [
                {"sensor_id": 18, "value": 40, "timestamp": TS},
                {"sensor_id": 99, "value": 7.5, "timestamp": TS},  # not registered: accepted
                {"sensor_id": "17", "value": 22.0, "timestamp": "2026-02-25T21:01:00Z"},
            ]
        },
        headers={"X-API-Key": iot.key},
    )

    assert (one.status_code, one.json()) == (200, {"inserted": 1})
    assert (bulk.status_code, bulk.json()) == (200, {"inserted": 3})
    batches = [r.batch for r in await read_batches()]
    got: dict[str, list[tuple[Any, ...]]] = {}  # the bus keeps each source's order only
    for b in batches:
        got.setdefault(b.source_id, []).extend(
            (p.stream_id, p.value, p.stream_type, p.legacy and p.legacy.sensor_uuid)
            for p in b.points
        )
    assert got == {
        DEVICE: [
            ("17", 21.5, "iot.temperature", TEMP),
            ("18", 40.0, "iot.humidity", HUMID),
            ("17", 22.0, "iot.temperature", TEMP),
        ],
        "sensor-99": [("99", 7.5, None, None)],
    }


async def test_readings_need_an_api_key_and_a_valid_body(iot: Any, read_stream: Any) -> None:
    no_key = await iot.client.post("/ingest/readings", json={"sensor_id": 17, "value": 1})
    assert (no_key.status_code, no_key.json()) == (401, {"detail": "missing X-API-Key header"})
    bad = await iot.client.post(
        "/ingest/readings/bulk",
        json={"readings": [{"sensor_id": -1, "value": 1}, {"value": 2, "timestamp": "yesterday"}]},
        headers={"X-API-Key": iot.key},
    )
    assert bad.status_code == 422
    assert [d["loc"] for d in bad.json()["detail"]] == [
        ["body", "readings", 0, "sensor_id"],
        ["body", "readings", 1, "sensor_id"],
        ["body", "readings", 1, "timestamp"],
    ]
    empty = await iot.client.post(
        "/ingest/readings/bulk", json={"readings": []}, headers={"X-API-Key": iot.key}
    )
    assert empty.status_code == 422
    assert await read_stream(DP_RAW) == []


async def test_status_of_a_sensor_nothing_was_stored_for(
    start_gateway: Any, database_dsn: str
) -> None:
    async with start_gateway(postgres_dsn=database_dsn) as gw:
        kv = await gw.js.key_value(gw.ns.bucket(DEVICES_BUCKET))
        await DeviceRegistry(kv).put_device(
            DeviceRecord(
                device_uuid=DEVICE,
                sensors=[SensorRecord(sensor_uuid=TEMP, sensor_id=17, sensor_type="temperature")],
            )
        )
        headers = {"X-API-Key": gw.key}
        known = await gw.client.get("/sensors/17/status", headers=headers)
        unknown = await gw.client.get("/sensors/404/status", headers=headers)
        bad = await gw.client.get("/sensors/abc/status", headers=headers)
        no_key = await gw.client.get("/sensors/17/status")

    assert (known.status_code, known.json()) == (
        200,
        {
            "sensor_id": 17,
            "device_uuid": DEVICE,
            "sensor_uuid": TEMP,
            "sensor_type": "temperature",
            "state": "NO_DATA",
            "latest": None,
            "active_alert": None,
        },
    )
    assert (unknown.status_code, unknown.json()) == (
        404,
        {"detail": "sensor 404 is not registered and has no readings"},
    )
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["path", "sensor_id"]
    assert no_key.status_code == 401


def test_status_body_names_the_legacy_classes() -> None:
    sensor = SensorIndexRecord(
        sensor_id=17, sensor_uuid=TEMP, device_uuid=DEVICE, sensor_type="temperature"
    )
    latest = {"value": 130.0, "time": T0, "cls": "critical", "reason": "above"}
    alert = {
        "alert_id": "a1", "severity": "critical", "rule": "physical_range", "reason": "above",
        "opened_at": T0, "first_value": 130.0, "last_value": 130.0, "last_at": T0,
        "peak_value": 130.0, "violation_count": 1,
    }  # fmt: skip
    body = status_body(17, sensor, latest, alert)
    assert body["state"] == "ALERT"
    assert body["latest"]["classification"] == "ALERT"
    assert body["latest"]["timestamp"] == "2026-02-25T21:00:00Z"
    assert body["active_alert"]["classification"] == "ALERT"
    assert status_body(17, None, {**latest, "cls": "anomaly"}, None)["state"] == "WARNING"
    assert LEGACY_CLASS["normal"] == "ML_PREDICTION"


async def test_app_serves_the_legacy_routes_without_a_database(
    start_gateway: Any,
) -> None:
    # the ingest path never opens PostgreSQL: a wrong DSN changes nothing for it
    async with start_gateway(postgres_dsn="postgresql://nobody@127.0.0.1:1/none") as gw:
        reply = await gw.client.post(
            "/ingest/readings", json={"sensor_id": 5, "value": 1.0}, headers={"X-API-Key": gw.key}
        )
        status = await gw.client.get("/sensors/5/status", headers={"X-API-Key": gw.key})
    assert (reply.status_code, reply.json()) == (200, {"inserted": 1})
    assert status.status_code == 503 and status.headers["Retry-After"]


async def test_a_registry_that_does_not_answer_gets_503(start_gateway: Any, servers: Any) -> None:
    nc = await nats.connect(servers.nats_url)
    async with start_gateway(nc) as gw:
        await nc.close()
        reply = await post_packet(gw, packet((TEMP, 1)))
    assert reply.status_code == 503, reply.text
    assert reply.headers["Retry-After"] == "2"
    assert reply.json()["detail"].startswith("the device registry did not answer")
