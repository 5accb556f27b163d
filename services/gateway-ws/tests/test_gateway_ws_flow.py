"""Backpressure, resume, replacement, bus failure and shutdown, against the real local NATS with
a real WebSocket client and uvicorn."""

from __future__ import annotations

import asyncio
import socket
from datetime import UTC, datetime, timedelta
from typing import Any

import nats
import orjson
import pytest
import websockets

from tributary_contracts import DP_RAW, ensure_jetstream

pytestmark = pytest.mark.integration

T0 = datetime(2026, 3, 1, tzinfo=UTC)
Gateway = Any  # the conftest's Gateway (conftest modules are not importable)


async def send(ws: Any, message: Any) -> None:
    await ws.send(message if isinstance(message, str | bytes) else orjson.dumps(message).decode())


async def recv(ws: Any, timeout: float = 5.0) -> dict[str, Any]:
    return dict(orjson.loads(await asyncio.wait_for(ws.recv(), timeout)))


def data(first: int, n: int, stream_id: str = "s") -> dict[str, Any]:
    """A data message of points with sequences first..first+n-1 (one second apart)."""
    return {
        "type": "data",
        "batch": [
            {
                "stream_id": stream_id,
                "value": float(i),
                "timestamp": (T0 + timedelta(seconds=i)).isoformat(),
                "sequence": i,
            }
            for i in range(first, first + n)
        ],
    }


async def stored_sequences(gw: Gateway) -> list[int]:
    return sorted(p.sequence for b in await gw.raw_points() for p in b.points)


def small_buffer_listener() -> socket.socket:
    """A listening socket whose accepted sockets have a tiny kernel send buffer, so unread acks
    fill the pipe after a few dozen instead of thousands (kernel autotuning would hide them)."""
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.bind(("127.0.0.1", 0))
    sock.listen(16)
    return sock


def small_buffer_client(port: int) -> socket.socket:
    sock = socket.socket()
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    sock.connect(("127.0.0.1", port))
    sock.setblocking(False)
    return sock


async def test_a_client_that_does_not_read_acks_is_slowed_not_dropped(
    start_gateway: Any,
) -> None:
    listener = small_buffer_listener()
    async with start_gateway(sock=listener) as gw:
        port = listener.getsockname()[1]
        async with gw.connect(
            sock=small_buffer_client(port), max_queue=1, ping_interval=None
        ) as ws:
            await gw.handshake(ws, "firehose")
            # Each ack names 10 rejected points with 256-character ids (~3 KB), so unread acks
            # fill uvicorn's 64 KiB write buffer and the small socket buffers quickly.
            long_ids = [{"stream_id": f"{i}" * 256, "value": "x"} for i in range(10)]
            sent = 0

            async def firehose() -> None:
                nonlocal sent
                for i in range(1000):
                    message = data(i * 20, 20)
                    message["batch"].extend(long_ids)
                    await send(ws, message)
                    sent += 1

            sender = asyncio.create_task(firehose())
            await asyncio.sleep(3.0)
            [session] = list(gw.sessions.sessions)
            stalled_at, owed_while_stalled = sent, session.owed

            acks = [await recv(ws, timeout=30) for _ in range(1000)]
            await asyncio.wait_for(sender, 30)
            await send(ws, {"type": "ping"})
            pong = await recv(ws)

    assert stalled_at < 300, f"the sender was not slowed: {stalled_at} messages sent"
    assert owed_while_stalled == 100 and session.max_in_flight_seen == 100
    assert pong == {"type": "pong"}
    assert [a["sequence_up_to"] for a in acks] == [i * 20 + 19 for i in range(1000)]
    assert {(a["accepted"], len(a["rejected"])) for a in acks} == {(20, 10)}
    assert await stored_sequences(gw) == list(range(20_000))


async def test_a_killed_connection_resumes_without_loss_or_duplicates(
    gateway: Gateway,
) -> None:
    messages = [data(i * 10, 10) for i in range(60)]
    async with gateway.connect(ping_interval=None) as ws:
        first = await gateway.handshake(ws, "flaky", resume=True)
        for message in messages[:40]:
            await send(ws, message)
        acked = [await recv(ws) for _ in range(15)]
        ws.transport.abort()  # killed: no close handshake, acks 15..39 never read

    async with gateway.connect() as ws:
        resumed = await gateway.handshake(ws, "flaky", resume=True)
        last = resumed["last_sequence"]
        todo = [m for m in messages if m["batch"][-1]["sequence"] > last]
        for message in todo:
            await send(ws, message)
        acks = [await recv(ws) for _ in todo]

    assert first["last_sequence"] is None
    assert last >= acked[-1]["sequence_up_to"] == 149
    assert [a["sequence_up_to"] for a in acks] == [m["batch"][-1]["sequence"] for m in todo]
    assert await stored_sequences(gateway) == list(range(600))


async def test_a_new_session_for_the_same_source_replaces_the_old_one_with_4000(
    gateway: Gateway,
) -> None:
    async with gateway.connect() as old, gateway.connect() as new:
        await gateway.handshake(old, "dup-src")
        await send(old, data(0, 5))
        await recv(old)
        resumed = await gateway.handshake(new, "dup-src", resume=True)
        with pytest.raises(websockets.ConnectionClosed) as closed:
            await recv(old)

    assert closed.value.rcvd is not None and closed.value.rcvd.code == 4000
    assert resumed["last_sequence"] == 4


async def test_bus_unavailable_is_an_error_then_close_1013_and_nothing_is_acked(
    start_gateway: Any, servers: Any, jetstream: Any, bus_prefix: str
) -> None:
    async with start_gateway(publish_timeout_seconds=1.0) as gw, gw.connect() as ws:
        await gw.handshake(ws)
        await send(ws, data(0, 3))
        ok = await recv(ws)
        await jetstream.delete_stream(gw.ns.stream(DP_RAW))
        try:
            await send(ws, data(3, 3))
            error = await recv(ws)
            with pytest.raises(websockets.ConnectionClosed) as closed:
                await recv(ws)
        finally:
            await ensure_jetstream(jetstream, gw.ns)  # the fixture deletes it afterwards

    assert ok["sequence_up_to"] == 2
    assert error["type"] == "error" and error["code"] == "bus_unavailable"
    assert closed.value.rcvd is not None and closed.value.rcvd.code == 1013


async def test_shutdown_acks_what_is_durable_then_closes_with_1001(gateway: Gateway) -> None:
    async with gateway.connect() as ws:
        await gateway.handshake(ws, "draining")
        for i in range(30):
            await send(ws, data(i * 100, 100))
        stopping = asyncio.create_task(gateway.stop())
        acks = []
        with pytest.raises(websockets.ConnectionClosed) as closed:
            for _ in range(31):  # bounded: 30 acks at most, then the close
                acks.append(await recv(ws, timeout=15))
        await stopping

    assert closed.value.rcvd is not None
    assert (closed.value.rcvd.code, closed.value.rcvd.reason) == (1001, "going away")
    assert acks and [a["sequence_up_to"] for a in acks] == [i * 100 + 99 for i in range(len(acks))]
    # Everything acked is on the bus (and nothing unacked was read and lost: a resend fills it).
    stored = await stored_sequences(gateway)
    assert stored[: len(acks) * 100] == list(range(len(acks) * 100))


async def test_resume_sequence_survives_a_gateway_restart(start_gateway: Any, servers: Any) -> None:
    async with start_gateway() as gw, gw.connect() as ws:
        await gw.handshake(ws, "restart-src")
        for i in range(5):
            await send(ws, data(i * 10, 10))
        [await recv(ws) for _ in range(5)]
    nc = await nats.connect(servers.nats_url)
    try:
        async with start_gateway(nc=nc) as gw2, gw2.connect() as ws:
            resumed = await gw2.handshake(ws, "restart-src", resume=True)
    finally:
        await nc.close()

    assert resumed["last_sequence"] == 49
