"""Staged rollout in gateway-http: deprecation headers and per-device use of the legacy
endpoints (deprecation.py), the universal API and per-domain switches, and the raw ledger."""

from __future__ import annotations

import asyncio
import base64
from datetime import date
from typing import Any

import pytest
from prometheus_client import REGISTRY

from gateway_http.deprecation import DeprecationSettings, deprecation_headers, device_of
from tributary_contracts import DP_LEDGER, SWITCHES_BUCKET, RawRecord

pytestmark = pytest.mark.integration

DEVICE = "0f6c1b2e-7a51-4c1c-9b1a-3e0b0e7f1a11"


def used(endpoint: str, device: str) -> float:
    labels = {"endpoint": endpoint, "device": device}
    return REGISTRY.get_sample_value("gateway_http_legacy_use_total", labels) or 0.0


def test_no_headers_until_a_sunset_is_set() -> None:
    assert deprecation_headers(DeprecationSettings()) == []


def test_headers_follow_rfc_9745_and_8594() -> None:
    headers = dict(
        deprecation_headers(
            DeprecationSettings(
                legacy_sunset=date(2027, 6, 30),
                legacy_deprecated_since=date(2026, 12, 1),
                legacy_migration_url="https://docs.example/ingest-data",
            )
        )
    )
    assert headers == {
        b"deprecation": b"@1796083200",
        b"sunset": b"Wed, 30 Jun 2027 00:00:00 GMT",
        b"link": b'<https://docs.example/ingest-data>; rel="deprecation", '
        b'<https://docs.example/ingest-data>; rel="sunset"',
    }
    assert (
        dict(deprecation_headers(DeprecationSettings(legacy_sunset=date(2027, 6, 30))))[
            b"deprecation"
        ]
        == b"true"
    )


@pytest.mark.parametrize(
    ("endpoint", "path_id", "body", "device"),
    [
        ("packets", None, b'{"device_uuid": "d-1", "readings": []}', "d-1"),
        ("readings", None, b'{"sensor_id": 17, "value": 1}', "sensor-17"),
        ("bulk", None, b'{"readings": [{"sensor_id": 18}, {"sensor_id": 19}]}', "sensor-18"),
        ("status", "17", b"", "sensor-17"),
        ("device_readings", "d-2", b"{}", "d-2"),
        ("packets", None, b"not json", "unknown"),
    ],
)
def test_the_device_of_a_legacy_request(
    endpoint: str, path_id: str | None, body: bytes, device: str
) -> None:
    assert device_of(endpoint, path_id, body) == device


async def test_legacy_replies_carry_the_headers_and_use_is_counted_per_device(
    start_gateway: Any,
) -> None:
    async with start_gateway(legacy_sunset=date(2027, 6, 30)) as gw:
        before = used("readings", "sensor-4242")
        reply = await gw.client.post(
            "/ingest/readings",
            json={"sensor_id": 4242, "value": 1.5},
            headers={"X-API-Key": gw.key},
        )
        data = await gw.post(
            {
                "source_id": "s",
                "domain": "infrastructure",
                "data_points": [{"stream_id": "x", "value": 1}],
            }
        )

    assert reply.status_code == 200, reply.text
    assert reply.headers["sunset"] == "Wed, 30 Jun 2027 00:00:00 GMT"
    assert reply.headers["deprecation"] == "true"
    assert 'rel="sunset"' in reply.headers["link"]
    assert used("readings", "sensor-4242") == before + 1
    assert data.status_code == 202 and "sunset" not in data.headers  # not a legacy endpoint


async def test_the_universal_api_can_be_switched_off(start_gateway: Any) -> None:
    async with start_gateway(universal_api_enabled=False) as gw:
        reply = await gw.post(
            {
                "source_id": "s",
                "domain": "infrastructure",
                "data_points": [{"stream_id": "x", "value": 1}],
            }
        )
    assert reply.status_code == 404
    assert "UNIVERSAL_API_ENABLED" in reply.json()["error"]


async def test_a_disabled_domain_is_refused_and_others_pass(start_gateway: Any) -> None:
    async with start_gateway(disabled_domains="finance, health") as gw:
        refused = await gw.post(
            {"source_id": "s", "domain": "finance", "data_points": [{"stream_id": "x", "value": 1}]}
        )
        accepted = await gw.post(
            {
                "source_id": "s",
                "domain": "infrastructure",
                "data_points": [{"stream_id": "x", "value": 1}],
            }
        )
    assert refused.status_code == 403
    assert refused.json() == {
        "error": "domain 'finance' is disabled on this gateway (DISABLED_DOMAINS)",
        "field": "domain",
    }
    assert accepted.status_code == 202


async def test_a_selected_source_input_is_in_the_raw_ledger(start_gateway: Any) -> None:
    async with start_gateway(raw_ledger="machines/dev-*") as gw:
        body = {
            "source_id": "dev-1",
            "domain": "machines",
            "data_points": [{"stream_id": "x", "value": 1}, {"stream_id": "y", "value": "z"}],
        }
        reply = await gw.post(body)
        other = await gw.post({**body, "source_id": "other"})
        sub = await gw.js.pull_subscribe(
            gw.ns.ledger_subject("http"), stream=gw.ns.stream(DP_LEDGER)
        )
        msgs = await sub.fetch(5, timeout=2)
        await sub.unsubscribe()

    assert reply.status_code == 202 and other.status_code == 202
    [record] = [RawRecord.model_validate_json(m.data) for m in msgs]
    assert (record.domain, record.source_id, record.status) == ("machines", "dev-1", 202)
    assert base64.b64decode(record.payload_b64).startswith(b'{"source_id":"dev-1"')
    assert [p.stream_id for p in record.accepted] == ["x"]
    assert [(e.index, e.stream_id) for e in record.rejected] == [(1, "y")]


async def test_switches_change_the_api_and_domains_live_and_unset_restores_the_environment(
    start_gateway: Any,
) -> None:
    body = {"source_id": "s", "domain": "finance", "data_points": [{"stream_id": "x", "value": 1}]}
    async with start_gateway() as gw:
        kv = await gw.js.key_value(gw.ns.bucket(SWITCHES_BUCKET))

        async def status_when(expected: int) -> int:
            for _ in range(100):  # the watch applies a change within milliseconds
                status = (await gw.post(body)).status_code
                if status == expected:
                    break
                await asyncio.sleep(0.05)
            return status

        assert await status_when(202) == 202
        await kv.put("gateway-http.DISABLED_DOMAINS", b"finance")
        assert await status_when(403) == 403
        await kv.put("gateway-http.UNIVERSAL_API_ENABLED", b"false")
        assert await status_when(404) == 404
        await kv.put("gateway-http.UNIVERSAL_API_ENABLED", b"maybe")  # invalid: environment's
        assert await status_when(403) == 403
        await kv.delete("gateway-http.UNIVERSAL_API_ENABLED")
        await kv.delete("gateway-http.DISABLED_DOMAINS")
        assert await status_when(202) == 202
