"""WebSocket producer → gateway-ws → JetStream → classifier → writer-postgres → rows."""

from __future__ import annotations

import asyncio
import json
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
import websockets

from tests.e2e.conftest import fleet_for_test
from tests.e2e.fleet_process import FleetProcess
from tests.e2e.rows import rows_for

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

# The seed's example (000, "WebSocket Streaming"), verbatim apart from the key.
SEED_CONNECT = {"type": "connect", "source_id": "server-01", "domain": "infrastructure"}
SEED_DATA = {
    "type": "data",
    "batch": [
        {"stream_id": "cpu_usage", "value": 45.2, "sequence": 1},
        {"stream_id": "memory_usage", "value": 78.5, "sequence": 2},
    ],
}


@pytest.fixture(scope="module")
def fleet(servers: object) -> Iterator[FleetProcess]:
    yield from fleet_for_test(servers)


def ws_url(fleet: FleetProcess) -> str:
    return fleet.url("gateway-ws").replace("http://", "ws://") + "/ingest/stream"


async def recv(ws: Any) -> dict[str, Any]:
    return dict(json.loads(await asyncio.wait_for(ws.recv(), 10)))


async def test_the_seed_handshake_and_data_example_end_as_rows(fleet: FleetProcess) -> None:
    async with websockets.connect(ws_url(fleet), open_timeout=10) as ws:
        await ws.send(json.dumps({**SEED_CONNECT, "api_key": fleet.admin_key}))
        connected = await recv(ws)
        await ws.send(json.dumps(SEED_DATA))
        ack = await recv(ws)

    assert connected["type"] == "connected" and connected["session_id"]
    assert ack == {"type": "ack", "sequence_up_to": 2, "accepted": 2, "rejected": []}
    rows = await rows_for(fleet.postgres_dsn, "server-01", want=2)
    assert [
        (r["domain"], r["stream_id"], r["value"], r["sequence"], r["transport"]) for r in rows
    ] == [
        ("infrastructure", "cpu_usage", 45.2, 1, "ws"),
        ("infrastructure", "memory_usage", 78.5, 2, "ws"),
    ]
    assert {r["cls"] for r in rows} == {"normal"}


async def test_a_killed_connection_resumes_and_every_point_is_stored_once(
    fleet: FleetProcess,
) -> None:
    t0 = datetime(2026, 3, 3, tzinfo=UTC)
    messages = [
        {
            "type": "data",
            "batch": [
                {
                    "stream_id": "load",
                    "value": float(seq),
                    "timestamp": (t0 + timedelta(seconds=seq)).isoformat(),
                    "sequence": seq,
                }
                for seq in range(i * 10, i * 10 + 10)
            ],
        }
        for i in range(30)
    ]
    hello = {"type": "connect", "source_id": "ws-resume-src", "domain": "infrastructure"}
    hello["api_key"] = fleet.admin_key
    async with websockets.connect(ws_url(fleet), open_timeout=10, ping_interval=None) as ws:
        await ws.send(json.dumps(hello))
        await recv(ws)
        for message in messages[:20]:
            await ws.send(json.dumps(message))
        [await recv(ws) for _ in range(5)]
        ws.transport.abort()

    async with websockets.connect(ws_url(fleet), open_timeout=10) as ws:
        await ws.send(json.dumps({**hello, "resume": True}))
        last = (await recv(ws))["last_sequence"]
        todo = [m for m in messages if m["batch"][-1]["sequence"] > last]
        for message in todo:
            await ws.send(json.dumps(message))
        acks = [await recv(ws) for _ in todo]

    assert last >= 49
    assert [a["type"] for a in acks] == ["ack"] * len(todo)
    rows = await rows_for(fleet.postgres_dsn, "ws-resume-src", want=300)
    assert sorted(r["sequence"] for r in rows) == list(range(300))


async def test_protocol_errors_reach_the_client_through_the_fleet(fleet: FleetProcess) -> None:
    async with websockets.connect(ws_url(fleet), open_timeout=10) as ws:
        await ws.send(json.dumps(SEED_DATA))
        before_connect = await recv(ws)
        await ws.send("{oops")
        bad_json = await recv(ws)
        await ws.send(json.dumps({"type": "subscribe"}))
        unknown = await recv(ws)
        await ws.send(json.dumps({**SEED_CONNECT, "api_key": "trb_wrong"}))
        unauthorized = await recv(ws)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv(ws)

    assert [before_connect["code"], bad_json["code"], unknown["code"], unauthorized["code"]] == [
        "not_connected",
        "bad_json",
        "unknown_type",
        "unauthorized",
    ]
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008


async def test_gateway_ws_serves_health_ready_and_metrics(fleet: FleetProcess) -> None:
    async with httpx.AsyncClient(base_url=fleet.url("gateway-ws"), timeout=10) as client:
        assert (await client.get("/health")).status_code == 200
        assert (await client.get("/ready")).json()["ready"] is True
        assert "gateway_ws_sessions_open" in (await client.get("/metrics")).text
