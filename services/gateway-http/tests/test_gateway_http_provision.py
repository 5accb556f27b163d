"""``POST /devices/provision`` against the real local NATS: a signed request registers a device
whose key then works on ``/ingest/packets``; a second one confirms it without a key; bad
signatures, stale or future timestamps, replayed nonces (also across two gateways sharing the
bucket) and malformed bodies are refused with their reasons; audit events are on the bus."""

from __future__ import annotations

import asyncio
import time
import uuid
from typing import Any

import orjson
import pytest

from gateway_http.provision import main, parse_body, provisioning_body, sign
from tributary_contracts import AUDIT, DEVICES_BUCKET, PROVISION_NONCES_BUCKET
from tributary_contracts.jetstream import PROVISION_NONCE_TTL_SECONDS
from tributary_runtime.devices import DeviceRecord, DeviceRegistry, SensorRecord

pytestmark = pytest.mark.integration

SECRET = "s3cret-for-tests"
SENSOR = "5b0e3a4e-2a7d-4f55-9a4b-9d1c9f0e0a77"


async def provision(gw: Any, body: Any) -> Any:
    return await gw.client.post("/devices/provision", json=body)


async def audit_actions(read_stream: Any, count: int) -> list[dict[str, Any]]:
    """The audit events on the bus once there are ``count`` (failures are published in the
    background); bounded wait."""
    for _ in range(50):
        events = [orjson.loads(m.data) for m in await read_stream(AUDIT)]
        if len(events) >= count:
            return events
        await asyncio.sleep(0.05)
    return events


async def test_signed_request_registers_a_device_whose_key_works_on_packets(
    start_gateway: Any, read_stream: Any, read_batches: Any
) -> None:
    async with start_gateway(provisioning_secret=SECRET) as gw:
        reply = await provision(gw, provisioning_body(SECRET, "SN-100"))
        assert reply.status_code == 201, reply.text
        doc = reply.json()
        assert doc["created"] is True and doc["serial"] == "SN-100" and doc["enabled"] is True
        key, device_uuid = doc["device_key"], doc["device_uuid"]
        assert key.startswith("dev_")
        assert reply.headers["cache-control"] == "no-store"

        # The registry holds only the key's hash; an operator adds a sensor, the key sends.
        registry = DeviceRegistry(await gw.js.key_value(gw.ns.bucket(DEVICES_BUCKET)), 0)
        record = await registry.read_device(device_uuid)
        assert record is not None and key not in record.model_dump_json()
        record.sensors.append(SensorRecord(sensor_uuid=SENSOR, sensor_id=7001, sensor_type="co2"))
        await registry.put_device(record)
        packet = {
            "device_uuid": device_uuid,
            "readings": [{"sensor_uuid": SENSOR, "value": 412.0}],
        }
        sent = await gw.client.post("/ingest/packets", json=packet, headers={"X-Device-Key": key})
        assert sent.status_code == 200, sent.text
        assert sent.json() == {"inserted": 1}
        assert any(r.batch.source_id == device_uuid for r in await read_batches())
        wrong = await gw.client.post(
            "/ingest/packets", json=packet, headers={"X-Device-Key": key + "x"}
        )
        assert wrong.status_code == 401

        # Same serial again (new nonce): confirmed, the key is not re-issued nor changed.
        again = await provision(gw, provisioning_body(SECRET, "SN-100"))
        assert again.status_code == 200, again.text
        assert again.json() == {
            "device_uuid": device_uuid,
            "serial": "SN-100",
            "created": False,
            "enabled": True,
            "device_key": None,
        }
        still = await gw.client.post("/ingest/packets", json=packet, headers={"X-Device-Key": key})
        assert still.status_code == 200
        assert len(await registry.list_devices()) == 1

        events = await audit_actions(read_stream, 2)
        provisioned = [e for e in events if e["action"] == "device_provisioned"]
        assert [e["details"]["created"] for e in provisioned] == [True, False]
        assert all(e["outcome"] == "success" for e in provisioned)
        assert all(key not in orjson.dumps(e).decode() for e in events)


async def test_bad_signature_stale_and_future_timestamps_are_refused(
    start_gateway: Any, read_stream: Any
) -> None:
    async with start_gateway(provisioning_secret=SECRET, provisioning_window_seconds=60) as gw:
        forged = provisioning_body("another-secret", "SN-200")
        reply = await provision(gw, forged)
        assert reply.status_code == 401
        assert "signature" in reply.json()["error"]

        tampered = provisioning_body(SECRET, "SN-200")
        tampered["serial"] = "SN-201"
        assert (await provision(gw, tampered)).status_code == 401

        now = int(time.time())
        stale = await provision(gw, provisioning_body(SECRET, "SN-200", now - 120))
        assert stale.status_code == 401
        assert "120 s old" in stale.json()["error"] and "60 s" in stale.json()["error"]
        future = await provision(gw, provisioning_body(SECRET, "SN-200", now + 3600))
        assert future.status_code == 401
        assert "in the future" in future.json()["error"]

        # None of these registered anything or used up a nonce: the same nonce, signed
        # properly and on time, is accepted.
        nonce = forged["nonce"]
        ok = await provision(gw, provisioning_body(SECRET, "SN-200", nonce=nonce))
        assert ok.status_code == 201, ok.text

        events = await audit_actions(read_stream, 5)
        refusals = sorted(e["details"]["refusal"] for e in events if e["outcome"] == "failure")
        assert refusals == ["bad_signature", "bad_signature", "stale_timestamp", "stale_timestamp"]


async def test_replayed_nonce_is_refused_by_this_and_another_gateway(
    start_gateway: Any, nats_client: Any
) -> None:
    async with start_gateway(provisioning_secret=SECRET) as first:
        body = provisioning_body(SECRET, "SN-300")
        assert (await provision(first, body)).status_code == 201
        replay = await provision(first, body)
        assert replay.status_code == 409
        assert "nonce was already used" in replay.json()["error"]

        # A second gateway (its own app) sharing the bucket refuses it too, and a race of one
        # fresh request on both accepts it exactly once.
        async with start_gateway(provisioning_secret=SECRET) as second:
            assert (await provision(second, body)).status_code == 409
            fresh = provisioning_body(SECRET, "SN-301")
            replies = await asyncio.gather(provision(first, fresh), provision(second, fresh))
            assert sorted(r.status_code for r in replies) == [201, 409]

    nonces = await first.js.key_value(first.ns.bucket(PROVISION_NONCES_BUCKET))
    status = await nonces.status()
    assert status.ttl == PROVISION_NONCE_TTL_SECONDS
    assert PROVISION_NONCE_TTL_SECONDS >= 2 * first.settings.provisioning_window_seconds


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"serial": ""}, "serial"),
        ({"serial": "has space"}, "serial"),
        ({"serial": "a" * 65}, "serial"),
        ({"timestamp": "1700000000"}, "timestamp"),
        ({"timestamp": True}, "timestamp"),
        ({"timestamp": 1.5}, "timestamp"),
        ({"nonce": "short"}, "nonce"),
        ({"nonce": None}, "nonce"),
        ({"signature": "zz"}, "signature"),
        ({"extra": 1}, "extra"),
    ],
)
def test_malformed_fields_are_named(change: dict[str, Any], field: str) -> None:
    body = {**provisioning_body(SECRET, "SN-400"), **change}
    with pytest.raises(Exception) as caught:
        parse_body(orjson.dumps(body))
    assert caught.value.field == field  # type: ignore[attr-defined]


async def test_malformed_bodies_get_422_naming_the_field(start_gateway: Any) -> None:
    async with start_gateway(provisioning_secret=SECRET) as gw:
        body = provisioning_body(SECRET, "SN-400")
        del body["nonce"]
        reply = await provision(gw, body)
        assert reply.status_code == 422
        assert reply.json()["field"] == "nonce" and "missing" in reply.json()["error"]
        bad = await gw.client.post("/devices/provision", content=b"{not json")
        assert bad.status_code == 422 and bad.json()["field"] == "body"
        listed = await provision(gw, [1, 2])
        assert listed.status_code == 422 and listed.json()["field"] == "body"


async def test_not_configured_answers_503_with_the_reason(gateway: Any) -> None:
    reply = await provision(gateway, provisioning_body(SECRET, "SN-500"))
    assert reply.status_code == 503
    assert "provisioning is not configured" in reply.json()["error"]
    assert "PROVISIONING_SECRET" in reply.json()["error"]


async def test_secret_from_a_file(
    start_gateway: Any, tmp_path: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    secret_file = tmp_path / "secret"
    secret_file.write_text(SECRET + "\n")
    monkeypatch.setenv("PROVISIONING_SECRET_FILE", str(secret_file))
    async with start_gateway() as gw:
        assert gw.settings.provisioning_secret.get_secret_value() == SECRET
        assert (await provision(gw, provisioning_body(SECRET, "SN-600"))).status_code == 201


async def test_rate_limit_per_ip(start_gateway: Any) -> None:
    async with start_gateway(
        provisioning_secret=SECRET, rate_limit_ip_burst=2, rate_limit_ip_per_second=0.01
    ) as gw:
        replies = [await provision(gw, {}) for _ in range(4)]
        assert [r.status_code for r in replies] == [422, 422, 429, 429]
        assert int(replies[-1].headers["retry-after"]) >= 1


def test_signing_cli_prints_a_body_the_gateway_accepts(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("PROVISIONING_SECRET", SECRET)
    assert main(["--serial", "SN-700", "--timestamp", "1700000000", "--nonce", "n" * 16]) == 0
    body = orjson.loads(capsys.readouterr().out)
    assert body["signature"] == sign(SECRET, "SN-700", 1700000000, "n" * 16)
    assert parse_body(orjson.dumps(body)) == ("SN-700", 1700000000, "n" * 16, body["signature"])
    monkeypatch.delenv("PROVISIONING_SECRET")
    assert main(["--serial", "SN-700"]) == 2


async def test_one_serial_raced_on_two_gateways_registers_one_device(
    start_gateway: Any,
) -> None:
    async with (
        start_gateway(provisioning_secret=SECRET) as first,
        start_gateway(provisioning_secret=SECRET) as second,
    ):
        replies = await asyncio.gather(
            provision(first, provisioning_body(SECRET, "SN-800")),
            provision(second, provisioning_body(SECRET, "SN-800")),
        )
        assert sorted(r.status_code for r in replies) == [200, 201]
        assert len({r.json()["device_uuid"] for r in replies}) == 1
        registry = DeviceRegistry(await first.js.key_value(first.ns.bucket(DEVICES_BUCKET)), 0)
        assert [d.serial for d in await registry.list_devices()] == ["SN-800"]


async def test_a_device_added_by_the_cli_with_its_serial_is_confirmed(start_gateway: Any) -> None:
    async with start_gateway(provisioning_secret=SECRET) as gw:
        registry = DeviceRegistry(await gw.js.key_value(gw.ns.bucket(DEVICES_BUCKET)), 0)
        added = DeviceRecord(device_uuid=str(uuid.uuid4()), serial="SN-900", key_sha256="ab" * 32)
        await registry.put_device(added)  # what `tributary devices add --serial SN-900` stores
        reply = await provision(gw, provisioning_body(SECRET, "SN-900"))
        assert reply.status_code == 200, reply.text
        assert reply.json()["device_uuid"] == added.device_uuid
        assert reply.json()["device_key"] is None
        stored = await registry.read_device(added.device_uuid)
        assert stored is not None and stored.key_sha256 == "ab" * 32
