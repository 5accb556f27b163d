"""Bounded input on the real gateways: oversized headers, deeply nested JSON, over-long keys —
each a clear 4xx naming the problem, never a 5xx, and nothing published."""

from __future__ import annotations

from typing import Any

import pytest
import websockets

from tests.security.conftest import Fleet

pytestmark = pytest.mark.integration


async def test_too_large_or_too_many_headers_are_431_on_every_http_gateway(fleet: Fleet) -> None:
    big = {"X-API-Key": fleet.keys.admin, "X-Padding": "p" * 20_000}
    many = {"X-API-Key": fleet.keys.admin} | {f"X-H{i}": "1" for i in range(80)}
    replies = [
        await fleet.http.post("/ingest/data", json={}, headers=big),
        await fleet.http.post("/ingest/data", json={}, headers=many),
        await fleet.csv.get("/ingest/csv/jobs", headers=big),
    ]
    assert [r.status_code for r in replies] == [431, 431, 431]
    assert "at most 16384 bytes" in replies[0].json()["error"]
    assert "at most 64" in replies[1].json()["error"]
    assert await fleet.raw_batches() == []


async def test_a_websocket_handshake_with_too_many_headers_is_refused(fleet: Fleet) -> None:
    # (A single header line beyond 8 KiB never reaches the app: the websockets layer drops it.)
    with pytest.raises(websockets.InvalidStatus) as refused:
        async with websockets.connect(
            fleet.ws_url, additional_headers={f"X-H{i}": "1" for i in range(80)}, open_timeout=10
        ):
            pass
    assert refused.value.response.status_code in (403, 431)


async def test_deeply_nested_json_is_a_clear_400_or_rejection(fleet: Fleet) -> None:
    headers = {"X-API-Key": fleet.keys.admin, "Content-Type": "application/json"}
    body = '{"source_id": "s", "domain": "infrastructure", "data_points": ' + "[" * 5000 + (
        "]" * 5000 + "}")
    deep_body = await fleet.http.post("/ingest/data", content=body, headers=headers)
    nested: dict[str, Any] = {}
    for _ in range(40):
        nested = {"a": nested}
    deep_meta = await fleet.ingest(
        fleet.keys.admin, points=[{"stream_id": "x", "value": 1, "metadata": nested}]
    )
    assert deep_body.status_code == 400 and "not valid JSON" in deep_body.json()["error"]
    assert deep_meta.status_code == 422
    assert "metadata nests objects/arrays more than 16 levels" in deep_meta.json()["rejected"][0][
        "reason"]
    assert await fleet.raw_batches() == []


async def test_an_over_long_key_is_401_without_being_looked_up(fleet: Fleet) -> None:
    reply = await fleet.ingest("trb_" + "a" * 5000)
    assert reply.status_code == 401
    assert reply.json() == {"error": "malformed API key (expected trb_<id>_<secret>)"}
