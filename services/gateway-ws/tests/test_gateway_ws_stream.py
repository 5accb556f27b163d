"""/ingest/stream against the real local NATS, through a real WebSocket client and uvicorn:
the replies, and the messages really on the bus."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
import websockets

from tributary_access.apikeys import Role
from tributary_contracts import (
    DEFAULT_PARTITIONS,
    DP_REJECTED,
    RejectedInput,
    batch_msg_id,
    bundle_msg_id,
    partition_of,
)

pytestmark = pytest.mark.integration

T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)
Gateway = Any  # the conftest's Gateway (conftest modules are not importable)


async def send(ws: Any, message: Any) -> None:
    await ws.send(message if isinstance(message, str | bytes) else orjson.dumps(message).decode())


async def recv(ws: Any, timeout: float = 5.0) -> dict[str, Any]:
    return dict(orjson.loads(await asyncio.wait_for(ws.recv(), timeout)))


def points(n: int, start: int = 0, stream_id: str = "cpu_usage") -> list[dict[str, Any]]:
    return [
        {
            "stream_id": stream_id,
            "value": float(i),
            "timestamp": (T0 + timedelta(seconds=i)).isoformat(),
            "sequence": i,
        }
        for i in range(start, start + n)
    ]


async def test_seed_handshake_and_data_are_acked_after_the_batch_is_on_dp_raw(
    gateway: Gateway,
) -> None:
    async with gateway.connect() as ws:
        connected = await gateway.handshake(ws)
        assert set(connected) == {"type", "session_id"} and len(connected["session_id"]) == 32
        before = datetime.now(UTC)
        await send(
            ws,
            {
                "type": "data",
                "batch": [
                    {"stream_id": "cpu_usage", "value": 45.2, "sequence": 1},
                    {"stream_id": "memory_usage", "value": 78.5, "sequence": 2},
                ],
            },
        )
        ack = await recv(ws)

    assert ack == {"type": "ack", "sequence_up_to": 2, "accepted": 2, "rejected": []}
    [raw] = await gateway.raw_batches()
    partition = partition_of("infrastructure", "server-01", DEFAULT_PARTITIONS)
    assert raw.subject == gateway.ns.raw_partition_subject("infrastructure", partition)
    batch = orjson.loads(raw.batch.model_dump_json())
    assert (batch["domain"], batch["source_id"], batch["transport"]) == (
        "infrastructure",
        "server-01",
        "ws",
    )
    assert [(p["stream_id"], p["value"], p["sequence"]) for p in batch["points"]] == [
        ("cpu_usage", 45.2, 1),
        ("memory_usage", 78.5, 2),
    ]
    received_at = datetime.fromisoformat(batch["received_at"])
    assert before <= received_at <= datetime.now(UTC)
    assert [p["ts"] for p in batch["points"]] == [batch["received_at"]] * 2


async def test_a_large_data_message_becomes_batches_of_500_with_deterministic_msg_ids(
    gateway: Gateway,
) -> None:
    async with gateway.connect() as ws:
        await gateway.handshake(ws, "big-src")
        await send(ws, {"type": "data", "batch": points(1200)})
        ack = await recv(ws)

    assert ack == {"type": "ack", "sequence_up_to": 1199, "accepted": 1200, "rejected": []}
    raws = await gateway.raw_batches()
    sizes = [len(r.batch.points) for r in raws]
    assert sizes == [500, 500, 200]
    expected_ids = [
        batch_msg_id(
            "infrastructure",
            "big-src",
            [("cpu_usage", T0 + timedelta(seconds=i)) for i in range(lo, hi)],
        )
        for lo, hi in ((0, 500), (500, 1000), (1000, 1200))
    ]
    assert {r.bundle_msg_id for r in raws} == {bundle_msg_id(expected_ids)}


async def test_rejected_points_are_named_in_the_ack_and_published_on_dp_rejected_ws(
    gateway: Gateway,
) -> None:
    batch = [
        {"stream_id": "ok", "value": 1.0, "timestamp": "2026-02-25T21:00:00Z", "sequence": 5},
        {"stream_id": "bad", "value": "high", "sequence": 6},
        {"value": 3.0, "sequence": 7},
    ]
    async with gateway.connect() as ws:
        await gateway.handshake(ws)
        await send(ws, {"type": "data", "batch": batch})
        ack = await recv(ws)

    assert ack == {
        "type": "ack",
        "sequence_up_to": 7,
        "accepted": 1,
        "rejected": [
            {
                "index": 1,
                "stream_id": "bad",
                "reason": "value must be a number, got the text 'high'",
            },
            {"index": 2, "stream_id": None, "reason": "stream_id is required"},
        ],
    }
    [raw] = await gateway.raw_points()
    assert [p.stream_id for p in raw.points] == ["ok"]
    stream = gateway.ns.stream(DP_REJECTED)
    info = await gateway.js.stream_info(stream)
    [rejected] = [
        RejectedInput.model_validate_json((await gateway.js.get_msg(stream, seq)).data)
        for seq in range(info.state.first_seq, info.state.last_seq + 1)
    ]
    assert rejected.transport == "ws" and rejected.source_id == "server-01"
    assert [(e.index, e.reason) for e in rejected.rejected] == [
        (1, "value must be a number, got the text 'high'"),
        (2, "stream_id is required"),
    ]
    assert orjson.loads(rejected.rejected[0].excerpt) == batch[1]


async def test_pipelined_data_messages_are_acked_in_order(gateway: Gateway) -> None:
    async with gateway.connect() as ws:
        await gateway.handshake(ws)
        for i in range(50):
            await send(ws, {"type": "data", "batch": points(10, start=i * 10)})
        acks = [await recv(ws) for _ in range(50)]

    assert [a["sequence_up_to"] for a in acks] == [i * 10 + 9 for i in range(50)]
    stored = [p.sequence for b in await gateway.raw_points() for p in b.points]
    assert stored == list(range(500))


async def test_ping_gets_a_pong_in_order_behind_acks(gateway: Gateway) -> None:
    async with gateway.connect() as ws:
        await gateway.handshake(ws)
        await send(ws, {"type": "data", "batch": points(3)})
        await send(ws, {"type": "ping", "id": 42})
        first, second = await recv(ws), await recv(ws)

    assert first["type"] == "ack" and second == {"type": "pong", "id": 42}


@pytest.mark.parametrize(
    ("frame", "code", "reason_part"),
    [
        ("{not json", "bad_json", "not valid JSON"),
        ("[1, 2]", "bad_message", "must be a JSON object, got an array"),
        ('{"batch": []}', "bad_message", "string field type"),
        ('{"type": "subscribe"}', "unknown_type", "unknown message type 'subscribe'"),
        ('{"type": "data", "batch": []}', "bad_batch", "at least one point"),
        ('{"type": "data", "batch": {"a": 1}}', "bad_batch", "array of points"),
        ('{"type": "data", "batch": [1], "x": 1}', "bad_batch", "unknown field(s) x"),
    ],
)
async def test_protocol_mistakes_get_an_error_and_the_session_goes_on(
    gateway: Gateway, frame: str, code: str, reason_part: str
) -> None:
    async with gateway.connect() as ws:
        await gateway.handshake(ws)
        await send(ws, frame)
        error = await recv(ws)
        await send(ws, {"type": "data", "batch": points(1, start=9)})
        ack = await recv(ws)

    assert error["type"] == "error" and error["code"] == code, error
    assert reason_part in error["reason"]
    assert ack["type"] == "ack" and ack["sequence_up_to"] == 9


async def test_data_before_connect_is_an_error_and_connect_still_works(gateway: Gateway) -> None:
    async with gateway.connect() as ws:
        await send(ws, {"type": "data", "batch": points(1)})
        error = await recv(ws)
        await gateway.handshake(ws)
        await send(
            ws,
            {
                "type": "connect",
                "source_id": "x",
                "domain": "infrastructure",
                "api_key": gateway.key,
            },
        )
        again = await recv(ws)

    assert error == {"type": "error", "code": "not_connected", "reason": "send connect before data"}
    assert again["code"] == "already_connected"
    assert await gateway.raw_batches() == []


async def test_an_invalid_connect_is_an_error_and_a_corrected_one_connects(
    gateway: Gateway,
) -> None:
    async with gateway.connect() as ws:
        await send(
            ws,
            {"type": "connect", "source_id": "s", "domain": "Bad Domain", "api_key": gateway.key},
        )
        bad_domain = await recv(ws)
        await send(
            ws, {"type": "connect", "source_id": "s", "domain": "iot", "api_key": gateway.key}
        )
        iot = await recv(ws)
        await gateway.handshake(ws)

    assert bad_domain["code"] == "bad_connect" and "domain must match" in bad_domain["reason"]
    assert iot["code"] == "bad_connect" and "'iot'" in iot["reason"]


async def test_an_oversize_frame_is_discarded_with_an_error_and_the_session_goes_on(
    start_gateway: Any,
) -> None:
    async with start_gateway(max_frame_bytes=4096) as gw, gw.connect() as ws:
        await gw.handshake(ws)
        await send(ws, {"type": "data", "batch": points(100)})  # ~8 KB
        error = await recv(ws)
        await send(ws, {"type": "data", "batch": points(2)})
        ack = await recv(ws)

        assert error["code"] == "frame_too_large" and "larger than 4096 bytes" in error["reason"]
        assert ack["sequence_up_to"] == 1
        assert [len(b.points) for b in await gw.raw_points()] == [2]


async def test_a_frame_beyond_the_transport_limit_closes_with_1009(start_gateway: Any) -> None:
    async with start_gateway(max_frame_bytes=1024) as gw, gw.connect() as ws:
        await gw.handshake(ws)
        await send(ws, "x" * 5000)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv(ws)

    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1009


async def test_too_many_points_in_one_message_is_an_error(start_gateway: Any) -> None:
    async with start_gateway(max_points_per_message=10) as gw, gw.connect() as ws:
        await gw.handshake(ws)
        await send(ws, {"type": "data", "batch": points(11)})
        error = await recv(ws)

    assert error["code"] == "bad_batch" and "at most 10" in error["reason"]


@pytest.mark.parametrize(
    ("key", "code"), [("trb_unknown", "unauthorized"), ("", "unauthorized"), (None, "forbidden")]
)
async def test_a_bad_api_key_gets_an_error_then_close_1008(
    gateway: Gateway, key: str | None, code: str
) -> None:
    if key is None:  # a key whose role may not ingest
        key = await gateway.keys.create(Role.READ_ONLY, "dashboards")
    async with gateway.connect() as ws:
        await send(
            ws, {"type": "connect", "source_id": "s", "domain": "infrastructure", "api_key": key}
        )
        error = await recv(ws)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv(ws)

    assert error["type"] == "error" and error["code"] == code
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert closed.value.rcvd.reason == error["reason"]


async def test_sessions_beyond_the_per_key_limit_are_closed_with_1013(start_gateway: Any) -> None:
    async with start_gateway(max_sessions_per_key=2) as gw:
        async with gw.connect() as a, gw.connect() as b, gw.connect() as c:
            await gw.handshake(a, "a")
            await gw.handshake(b, "b")
            await send(
                c,
                {
                    "type": "connect",
                    "source_id": "c",
                    "domain": "infrastructure",
                    "api_key": gw.key,
                },
            )
            error = await recv(c)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await recv(c)
            await send(a, {"type": "ping"})
            still_open = await recv(a)

    assert error["code"] == "too_many_sessions"
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013
    assert still_open == {"type": "pong"}


async def test_no_connect_within_the_timeout_closes_with_1008(start_gateway: Any) -> None:
    async with start_gateway(connect_timeout_seconds=0.3) as gw, gw.connect() as ws:
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv(ws)

    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1008
    assert closed.value.rcvd.reason == "no connect within 0.3 s"


async def test_an_idle_session_is_closed_with_1000(start_gateway: Any) -> None:
    async with start_gateway(idle_timeout_seconds=0.3) as gw, gw.connect() as ws:
        await gw.handshake(ws)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv(ws)

    assert closed.value.rcvd is not None and (closed.value.rcvd.code, closed.value.rcvd.reason) == (
        1000,
        "idle timeout",
    )


async def test_keepalive_pings_are_sent_and_a_silent_peer_is_closed(start_gateway: Any) -> None:
    async with start_gateway(ping_interval_seconds=0.2, ping_timeout_seconds=0.3) as gw:
        # A client that answers pings stays connected across several ping intervals.
        async with gw.connect(ping_interval=None) as ws:
            await gw.handshake(ws)
            await asyncio.sleep(1.0)
            await send(ws, {"type": "ping"})
            assert await recv(ws) == {"type": "pong"}
        # A peer that never reads (so never answers a ping) is closed by the keepalive.
        raw = await asyncio.open_connection("127.0.0.1", gw.settings.port)
        reader, writer = raw
        writer.write(
            b"GET /ingest/stream HTTP/1.1\r\nHost: x\r\nUpgrade: websocket\r\n"
            b"Connection: Upgrade\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\n"
            b"Sec-WebSocket-Version: 13\r\n\r\n"
        )
        await writer.drain()
        data = await asyncio.wait_for(reader.read(4096), 5)  # the 101 response
        assert data.startswith(b"HTTP/1.1 101")
        closed_at = None
        for _ in range(40):  # bounded: ~4 s
            chunk = await asyncio.wait_for(reader.read(4096), 5)
            if not chunk:
                closed_at = True
                break
            data += chunk
        writer.close()
        assert closed_at, "the server did not close a peer that never answered pings"
        assert b"\x89" in data  # a ping frame (FIN + opcode 9) was sent


async def test_health_ready_and_metrics(gateway: Gateway) -> None:
    async with gateway.connect() as ws:
        await gateway.handshake(ws)
        await send(ws, {"type": "data", "batch": points(2)})
        await recv(ws)
        async with httpx.AsyncClient(base_url=gateway.http_url) as client:
            health = await client.get("/health")
            ready = await client.get("/ready")
            metrics = (await client.get("/metrics")).text

    assert health.json() == {"status": "ok"}
    assert ready.json() == {"ready": True, "checks": {"nats": True, "stream": True}}
    for name in (
        "gateway_ws_sessions_open",
        "gateway_ws_batches_in_flight",
        "gateway_ws_ack_latency_seconds_bucket",
        "gateway_ws_points_published_total",
    ):
        assert name in metrics
