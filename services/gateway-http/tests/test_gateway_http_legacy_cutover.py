"""Cut-over behaviours of the legacy endpoints against the real local NATS: device-auth modes
(required / migration), no device enumeration, per-IP and per-device rate limits with 429 +
Retry-After, and ``POST /devices/{uuid}/readings``."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import pytest
from prometheus_client import REGISTRY

from tributary_contracts import AUDIT, DEVICES_BUCKET, AuditEvent
from tributary_runtime.devices import (
    DeviceRecord,
    DeviceRegistry,
    SensorRecord,
    hash_device_key,
)

pytestmark = pytest.mark.integration

DEVICE = "0f6c1b2e-7a51-4c1c-9b1a-3e0b0e7f1a11"
DISABLED = "22222222-2222-4222-8222-222222222222"
UNKNOWN = "33333333-3333-4333-8333-333333333333"
TEMP = "5b0e3a4e-2a7d-4f55-9a4b-9d1c9f0e0a01"
OTHER_SENSOR = "5b0e3a4e-2a7d-4f55-9a4b-9d1c9f0e0a03"
KEY = "dev_the-device-key"
TS = "2026-02-25T21:00:00Z"


def keyless() -> float:
    return REGISTRY.get_sample_value("gateway_http_legacy_keyless_packets_total") or 0.0


@asynccontextmanager
async def iot_gateway(start_gateway: Any, **overrides: Any) -> AsyncIterator[Any]:
    async with start_gateway(**overrides) as gw:
        registry = DeviceRegistry(
            await gw.js.key_value(gw.ns.bucket(DEVICES_BUCKET)), cache_seconds=0
        )
        await registry.put_device(
            DeviceRecord(
                device_uuid=DEVICE,
                key_sha256=hash_device_key(KEY),
                sensors=[SensorRecord(sensor_uuid=TEMP, sensor_id=17, sensor_type="temperature")],
            )
        )
        await registry.put_device(
            DeviceRecord(
                device_uuid=DISABLED,
                key_sha256=hash_device_key("k2"),
                enabled=False,
                sensors=[SensorRecord(sensor_uuid=OTHER_SENSOR, sensor_id=19)],
            )
        )
        yield gw


def packet(device: str = DEVICE, sensor: str = TEMP, n: int = 1, v: float = 20) -> dict[str, Any]:
    return {
        "device_uuid": device,
        "readings": [
            {"sensor_uuid": sensor, "value": v + i, "timestamp": f"2026-02-25T21:{v + i:02.0f}:00Z"}
            for i in range(n)
        ],
    }


async def post(gw: Any, body: Any, key: str | None, path: str = "/ingest/packets") -> Any:
    headers = {"X-Device-Key": key} if key is not None else {}
    return await gw.client.post(path, json=body, headers=headers)


async def test_required_mode_refuses_a_keyless_packet_of_a_registered_device(
    start_gateway: Any, read_batches: Any
) -> None:
    async with iot_gateway(start_gateway) as gw:
        reply = await post(gw, packet(), None)
    assert (reply.status_code, reply.json()) == (401, {"detail": "missing X-Device-Key header"})
    assert await read_batches() == []


async def test_migration_mode_accepts_keyless_packets_of_registered_devices_counted_and_audited(
    start_gateway: Any, read_stream: Any, read_batches: Any
) -> None:
    before = keyless()
    async with iot_gateway(start_gateway, device_auth_mode="migration") as gw:
        first = await post(gw, packet(), None)
        second = await post(gw, packet(n=2), None)
        wrong = await post(gw, packet(), "dev_wrong")
        unknown = await post(gw, packet(device=UNKNOWN), None)
        disabled = await post(gw, packet(device=DISABLED, sensor=OTHER_SENSOR), None)
    audit = await read_stream(AUDIT)  # after shutdown: background audit publishes are done
    assert (first.status_code, first.json()) == (200, {"inserted": 1})
    assert (second.status_code, second.json()) == (200, {"inserted": 2})
    # a wrong key stays wrong; unregistered or disabled devices without a key are refused alike
    assert (wrong.status_code, wrong.json()) == (
        401,
        {"detail": f"X-Device-Key is not valid for device {DEVICE}"},
    )
    missing = (401, {"detail": "missing X-Device-Key header"})
    assert (unknown.status_code, unknown.json()) == missing
    assert (disabled.status_code, disabled.json()) == missing
    assert keyless() == before + 2
    batches = [r.batch for r in await read_batches()]
    assert {b.source_id for b in batches} == {DEVICE}
    assert sum(len(b.points) for b in batches) == 3
    events = [AuditEvent.model_validate_json(m.data) for m in audit]
    unauthenticated = [e for e in events if e.action == "device_unauthenticated"]
    # one event per device per DEVICE_AUTH_AUDIT_SECONDS, not one per packet
    assert [(e.target, e.details) for e in unauthenticated] == [
        (f"device {DEVICE}", {"device_uuid": DEVICE, "packets": 1})
    ]


@pytest.mark.parametrize("mode", ["required", "migration"])
async def test_a_wrong_key_gets_the_same_reply_for_an_unknown_and_a_known_device(
    start_gateway: Any, mode: str
) -> None:
    async with iot_gateway(start_gateway, device_auth_mode=mode) as gw:
        known = await post(gw, packet(), "dev_wrong")
        unknown = await post(gw, packet(device=UNKNOWN), "dev_wrong")
        known_path = await post(
            gw, {"readings": packet()["readings"]}, "dev_wrong", f"/devices/{DEVICE}/readings"
        )
        unknown_path = await post(
            gw, {"readings": packet()["readings"]}, "dev_wrong", f"/devices/{UNKNOWN}/readings"
        )
    for device, reply in (
        (DEVICE, known),
        (UNKNOWN, unknown),
        (DEVICE, known_path),
        (UNKNOWN, unknown_path),
    ):
        assert (reply.status_code, reply.json()) == (
            401,
            {"detail": f"X-Device-Key is not valid for device {device}"},
        )
        assert set(reply.headers) == set(known.headers)


async def test_post_device_readings_is_a_packet_named_by_the_path(
    start_gateway: Any, read_stream: Any, read_batches: Any
) -> None:
    async with iot_gateway(start_gateway) as gw:
        reply = await post(
            gw, {"readings": packet()["readings"]}, KEY, f"/devices/{DEVICE}/readings"
        )
        bad = await post(gw, {"readings": []}, KEY, "/devices/not-a-uuid/readings")
    assert (reply.status_code, reply.json()) == (200, {"inserted": 1})
    assert bad.status_code == 422 and bad.json()["detail"][0]["loc"] == ["path", "device_uuid"]
    [message] = await read_batches()
    assert message.batch.source_id == DEVICE


async def test_packets_spend_the_client_ip_budget_then_429_with_retry_after(
    start_gateway: Any, read_stream: Any, read_batches: Any
) -> None:
    async with iot_gateway(
        start_gateway, rate_limit_ip_per_second=0.001, rate_limit_ip_burst=2
    ) as gw:
        replies = [await post(gw, packet(v=i), KEY) for i in range(3)]
    assert [r.status_code for r in replies] == [200, 200, 429]
    assert int(replies[2].headers["Retry-After"]) >= 1
    assert replies[2].json()["detail"].startswith("rate limit: more than")
    stored = [r.batch for r in await read_batches()]
    assert sorted(p.value for b in stored for p in b.points) == [0.0, 1.0]


async def test_a_device_beyond_its_point_budget_gets_429_and_nothing_is_published(
    start_gateway: Any, read_stream: Any, read_batches: Any
) -> None:
    async with iot_gateway(
        start_gateway,
        rate_limit_source_points_per_second=0.001,
        rate_limit_source_burst=3,
        rate_limit_backfill_points_per_second=0.001,
        rate_limit_backfill_burst=3,
    ) as gw:
        ok = await post(gw, packet(n=2), KEY)
        refused = await post(gw, packet(n=2), KEY)
        # the same device's budget spent through the sensor-id endpoint
        bulk = await gw.client.post(
            "/ingest/readings/bulk",
            json={"readings": [{"sensor_id": 17, "value": 1.0, "timestamp": TS}] * 2},
            headers={"X-API-Key": gw.key},
        )
        # another source (a sensor the registry does not know) has its own budget
        other = await gw.client.post(
            "/ingest/readings",
            json={"sensor_id": 99, "value": 1.0, "timestamp": TS},
            headers={"X-API-Key": gw.key},
        )
    assert (ok.status_code, ok.json()) == (200, {"inserted": 2})
    assert refused.status_code == 429 and int(refused.headers["Retry-After"]) >= 1
    assert DEVICE in refused.json()["detail"]
    assert bulk.status_code == 429
    assert (other.status_code, other.json()) == (200, {"inserted": 1})
    batches = [r.batch for r in await read_batches()]
    assert sorted((b.source_id, len(b.points)) for b in batches) == [(DEVICE, 2), ("sensor-99", 1)]
