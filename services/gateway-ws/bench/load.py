"""Benchmark of gateway-ws (not a test): ack latency at a fixed rate, and maximum throughput.

    .venv/bin/python services/gateway-ws/bench/load.py latency --sessions 50 --rate 5000
    .venv/bin/python services/gateway-ws/bench/load.py max --sessions 8 --points 500

Starts ``python -m gateway_ws`` as its own process on a fresh bus prefix against the local NATS,
creates an ingest key, drives it with real WebSocket clients from this process, prints figures
and removes the prefix's streams and buckets. ``latency``: every session sends one data message
of ``rate / sessions / 10`` points every 100 ms (open loop), and the time from send to its ack is
recorded. ``max``: every session keeps up to 100 data messages of ``--points`` points unacked;
points acked per second over the run is the sustained throughput.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import statistics
import subprocess
import sys
import time
import urllib.request
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import nats
import websockets

from tributary_access.apikeys import ApiKeyStore, Role
from tributary_contracts import API_KEYS_BUCKET, Namespace, ensure_jetstream

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))  # for tests.*
from tests.host import cpu_seconds, free_port  # noqa: E402
from tests.streams import drop_namespace  # noqa: E402

NATS_URL = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
T0 = datetime(2026, 1, 1, tzinfo=UTC)


def points(source: int, first: int, n: int) -> list[dict[str, Any]]:
    return [
        {
            "stream_id": f"s{(first + i) % 10}",
            "value": float(first + i),
            "timestamp": (T0 + timedelta(milliseconds=first + i)).isoformat(),
            "sequence": first + i,
        }
        for i in range(n)
    ]


async def latency_session(
    url: str, key: str, index: int, per_msg: int, seconds: float
) -> list[float]:
    latencies: list[float] = []
    sent_at: list[float] = []
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "connect",
                    "source_id": f"bench-{index}",
                    "domain": "infrastructure",
                    "api_key": key,
                }
            )
        )
        assert json.loads(await ws.recv())["type"] == "connected"
        count = int(seconds * 10)

        async def reader() -> None:
            for i in range(count):
                reply = json.loads(await ws.recv())
                assert reply["type"] == "ack", reply
                latencies.append(time.perf_counter() - sent_at[i])

        task = asyncio.create_task(reader())
        start = time.perf_counter() + (index % 10) * 0.01  # spread sessions over the 100 ms
        for i in range(count):
            delay = start + i * 0.1 - time.perf_counter()
            if delay > 0:
                await asyncio.sleep(delay)
            frame = json.dumps({"type": "data", "batch": points(index, i * per_msg, per_msg)})
            sent_at.append(time.perf_counter())
            await ws.send(frame)
        await asyncio.wait_for(task, 30)
    return latencies


async def max_session(url: str, key: str, index: int, per_msg: int, seconds: float) -> int:
    acked = 0
    async with websockets.connect(url, max_size=None) as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "connect",
                    "source_id": f"max-{index}",
                    "domain": "infrastructure",
                    "api_key": key,
                }
            )
        )
        assert json.loads(await ws.recv())["type"] == "connected"
        window = asyncio.Semaphore(100)
        deadline = time.perf_counter() + seconds
        sent = 0

        async def reader() -> None:
            nonlocal acked
            while True:
                reply = json.loads(await ws.recv())
                assert reply["type"] == "ack", reply
                acked += reply["accepted"]
                window.release()

        task = asyncio.create_task(reader())
        # Pre-encode a few frames: the client's own JSON cost must not be the bottleneck.
        frames = [
            json.dumps({"type": "data", "batch": points(index, j * per_msg, per_msg)})
            for j in range(20)
        ]
        while time.perf_counter() < deadline:
            await window.acquire()
            await ws.send(frames[sent % len(frames)])
            sent += 1
        acked_in_time = acked  # what drains after the deadline is not counted
        task.cancel()
    return acked_in_time


def http_get(url: str) -> str:
    with urllib.request.urlopen(url, timeout=2) as reply:
        return str(reply.read().decode())


def server_percentiles(metrics: str, ps: tuple[float, ...]) -> list[float]:
    """Percentiles (ms, bucket upper bounds) of the gateway's own ack latency histogram."""
    buckets = []
    for line in metrics.splitlines():
        if line.startswith("gateway_ws_ack_latency_seconds_bucket"):
            le = line.split('le="')[1].split('"')[0]
            buckets.append((float(le), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1] or 1.0
    return [next(le for le, n in buckets if n >= p / 100 * total) * 1000 for p in ps]


def pct(values: list[float], p: float) -> float:
    return sorted(values)[min(len(values) - 1, int(p / 100 * len(values)))] * 1000


async def run(args: argparse.Namespace) -> None:
    prefix = f"b{uuid.uuid4().hex[:10]}"
    cpu_at_deadline: list[float] = []
    port = free_port()
    nc = await nats.connect(NATS_URL)
    js = nc.jetstream()
    ns = Namespace(prefix)
    await ensure_jetstream(js, ns)
    store = ApiKeyStore(await js.key_value(ns.bucket(API_KEYS_BUCKET)))
    key = await store.create(Role.SOURCE_WRITER)
    env = {
        **os.environ,
        "BUS_PREFIX": prefix,
        "PORT": str(port),
        "NATS_URL": NATS_URL,
        "LOG_LEVEL": "WARNING",
        "MAX_SESSIONS_PER_KEY": "1000",
    }
    proc = subprocess.Popen([sys.executable, "-m", "gateway_ws"], env=env, cwd=ROOT)
    try:
        for _ in range(100):
            try:
                await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/ready")
                break
            except OSError:
                await asyncio.sleep(0.1)
        url = f"ws://127.0.0.1:{port}/ingest/stream"
        cpu0, wall0 = cpu_seconds(proc.pid), time.perf_counter()
        if args.mode == "max":  # CPU over the run itself, not the drain after it
            asyncio.get_running_loop().call_later(
                args.seconds, lambda: cpu_at_deadline.append(cpu_seconds(proc.pid))
            )
        if args.mode == "latency":
            per_msg = max(1, args.rate // args.sessions // 10)
            results = await asyncio.gather(
                *(latency_session(url, key, i, per_msg, args.seconds) for i in range(args.sessions))
            )
            wall = time.perf_counter() - wall0
            metrics = await asyncio.to_thread(http_get, f"http://127.0.0.1:{port}/metrics")
            s50, s95, s99 = server_percentiles(metrics, (50, 95, 99))
            lat = [x for r in results for x in r]
            print(
                f"latency: {args.sessions} sessions × {per_msg} points every 100 ms "
                f"= {args.sessions * per_msg * 10} points/s for {args.seconds:g} s; "
                f"{len(lat)} acks: p50 {pct(lat, 50):.2f} ms, p95 {pct(lat, 95):.2f} ms, "
                f"p99 {pct(lat, 99):.2f} ms, max {max(lat) * 1000:.1f} ms, "
                f"mean {statistics.fmean(lat) * 1000:.2f} ms; gateway CPU "
                f"{(cpu_seconds(proc.pid) - cpu0) / wall:.0%} of a core; inside the gateway "
                f"(histogram bucket bounds) p50 ≤ {s50:g} ms, p95 ≤ {s95:g} ms, "
                f"p99 ≤ {s99:g} ms"
            )
        else:
            acked = await asyncio.gather(
                *(max_session(url, key, i, args.points, args.seconds) for i in range(args.sessions))
            )
            wall = args.seconds
            print(
                f"max: {args.sessions} sessions × {args.points}-point messages, ≤100 unacked "
                f"each: {sum(acked) / wall:,.0f} points/s acked over {wall:.1f} s; gateway CPU "
                f"{(cpu_at_deadline[0] - cpu0) / wall:.0%} of a core"
            )
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        await drop_namespace(js, ns)
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["latency", "max"])
    parser.add_argument("--sessions", type=int, default=50)
    parser.add_argument("--rate", type=int, default=5000, help="points/s in total (latency)")
    parser.add_argument("--points", type=int, default=500, help="points per message (max)")
    parser.add_argument("--seconds", type=float, default=10.0)
    asyncio.run(run(parser.parse_args()))


if __name__ == "__main__":
    main()
