"""CPU per request of gateway-http for 1-point requests, next to a bare Starlette POST.

    python services/gateway-http/bench/per_request.py --seconds 5 --connections 32
    python services/gateway-http/bench/per_request.py --profile   # where the time goes

Starts ``python -m gateway_http`` (uvloop + httptools, as deployed) on a fresh bus prefix and the
empty Starlette app of ``bench/limits.py``, drives each closed loop with 1-point ``/ingest/data``
requests from ``--sources`` sources over ``--connections`` keep-alive connections, and reports the
server process's CPU (/proc utime+stime) per request: µs/request of the gateway, of the bare app,
and their ratio. Both run in the same invocation on the same machine, so the ratio holds even
when the machine is busy.

``--profile`` instead runs the gateway in this process on the same bus and calls its ASGI app
directly (no sockets) under pyinstrument (``pip install pyinstrument`` into the venv; not a
dependency), printing where a request's time goes.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from pathlib import Path

import nats
from openloop import drop_namespace, start_gateway, wait_ready

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT / "bench"))
from limits import EMPTY_APP  # noqa: E402
from loads import http_post, post_head  # noqa: E402

from tests.host import cpu_seconds, free_port  # noqa: E402
from tributary_access.apikeys import ApiKeyStore, Role  # noqa: E402
from tributary_contracts import API_KEYS_BUCKET, Namespace, ensure_jetstream  # noqa: E402

BASE_TS = 1_700_000_000


def body(source: int, n: int) -> bytes:
    return (
        b'{"source_id":"dev-%d","domain":"infrastructure","data_points":'
        b'[{"stream_id":"temp","value":%d.5,"timestamp":%d}]}' % (source, n, BASE_TS + n)
    )


async def drive(port: int, key: str | None, seconds: float, connections: int, sources: int) -> int:
    """Closed loop for ``seconds``; the number of 2xx replies (anything else stops the run)."""
    head = post_head("/ingest/data", key)
    done = [0] * connections
    deadline = time.monotonic() + seconds

    async def connection(c: int) -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        n = 0
        for _ in range(10_000_000):
            if time.monotonic() >= deadline:
                break
            source = (c + n * connections) % sources
            status = await http_post(reader, writer, head, body(source, n))
            if not 200 <= status < 300:
                raise RuntimeError(f"reply {status}: the measurement needs every request to pass")
            done[c] += 1
            n += 1
        writer.close()

    await asyncio.gather(*(connection(c) for c in range(connections)))
    return sum(done)


async def cpu_per_request(
    pid: int, port: int, key: str | None, args: argparse.Namespace
) -> tuple[float, float]:
    """(µs of server CPU per request, requests/s) over one closed-loop run after a warm-up."""
    await drive(port, key, 1.0, args.connections, args.sources)
    before = cpu_seconds(pid)
    started = time.monotonic()
    requests = await drive(port, key, args.seconds, args.connections, args.sources)
    elapsed = time.monotonic() - started
    return (cpu_seconds(pid) - before) / max(requests, 1) * 1e6, requests / elapsed


async def measure(args: argparse.Namespace) -> None:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    ns = Namespace(prefix)
    nc = await nats.connect(args.nats_url)
    js = nc.jetstream()
    await ensure_jetstream(js, ns)
    store = ApiKeyStore(await js.key_value(ns.bucket(API_KEYS_BUCKET)))
    key = await store.create(Role.SOURCE_WRITER)
    gateway_port, bare_port = free_port(), free_port()
    gateway = start_gateway(prefix, gateway_port, args.nats_url)
    bare = subprocess.Popen([sys.executable, "-c", EMPTY_APP, str(bare_port)], cwd=ROOT / "bench")
    try:
        await wait_ready(gateway_port)
        for _ in range(100):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", bare_port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        bare_us, bare_rate = await cpu_per_request(bare.pid, bare_port, None, args)
        gw_us, gw_rate = await cpu_per_request(gateway.pid, gateway_port, key, args)
        print(
            f"1-point requests, {args.connections} connections, {args.sources} sources, "
            f"{args.seconds:g} s each:\n"
            f"  bare Starlette POST: {bare_us:6.0f} µs CPU/request ({bare_rate:,.0f} req/s)\n"
            f"  gateway-http:        {gw_us:6.0f} µs CPU/request ({gw_rate:,.0f} req/s, "
            f"every reply after its bundle's PubAck)\n"
            f"  ratio:               {gw_us / bare_us:6.2f}"
        )
    finally:
        for proc in (gateway, bare):
            proc.terminate()
            proc.wait(timeout=20)
        await drop_namespace(js, ns)
        await nc.close()


async def profile(args: argparse.Namespace) -> None:
    """The gateway's ASGI app in this process, called directly, under pyinstrument."""
    from pyinstrument import Profiler

    from gateway_http.app import create_app
    from gateway_http.settings import GatewayHttpSettings

    prefix = f"bench{uuid.uuid4().hex[:8]}"
    ns = Namespace(prefix)
    nc = await nats.connect(args.nats_url)
    js = nc.jetstream()
    await ensure_jetstream(js, ns)
    store = ApiKeyStore(await js.key_value(ns.bucket(API_KEYS_BUCKET)))
    key = await store.create(Role.SOURCE_WRITER)
    settings = GatewayHttpSettings(nats_url=args.nats_url, bus_prefix=prefix)
    app = create_app(settings, nats_client=nc)
    startup: asyncio.Queue[dict[str, str]] = asyncio.Queue()
    await startup.put({"type": "lifespan.startup"})
    sent: list[dict[str, object]] = []

    async def lifespan_send(message: dict[str, object]) -> None:
        sent.append(message)

    life = asyncio.create_task(app({"type": "lifespan"}, startup.get, lifespan_send))
    while not sent:
        await asyncio.sleep(0.01)
    headers = [
        (b"host", b"gateway"),
        (b"x-api-key", key.encode()),
        (b"content-type", b"application/json"),
    ]

    async def one(n: int) -> None:
        payload = body(n % args.sources, n)
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/ingest/data",
            "raw_path": b"/ingest/data",
            "query_string": b"",
            "root_path": "",
            "headers": [*headers, (b"content-length", str(len(payload)).encode())],
            "client": ("127.0.0.1", 40000 + n % 100),
            "server": ("127.0.0.1", 8001),
        }
        chunks = [{"type": "http.request", "body": payload, "more_body": False}]

        async def receive() -> dict[str, object]:
            return chunks.pop() if chunks else {"type": "http.disconnect"}

        async def send(message: dict[str, object]) -> None:
            if message["type"] == "http.response.start":
                assert message["status"] == 202, message

        await app(scope, receive, send)

    try:
        for n in range(200):  # warm-up: caches, connections
            await one(n)
        profiler = Profiler(interval=0.0002, async_mode="disabled")
        started = time.perf_counter()
        with profiler:
            for wave in range(args.requests // 100):
                await asyncio.gather(*(one(wave * 100 + i + 1000) for i in range(100)))
        elapsed = time.perf_counter() - started
        print(f"{args.requests} requests in-process: {elapsed / args.requests * 1e6:.0f} µs each")
        print(profiler.output_text(unicode=True, color=False, show_all=False))
    finally:
        await startup.put({"type": "lifespan.shutdown"})
        await life
        await drop_namespace(js, ns)
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--sources", type=int, default=2000)
    parser.add_argument("--requests", type=int, default=5000, help="--profile: requests")
    parser.add_argument("--profile", action="store_true")
    parser.add_argument("--nats-url", default="nats://127.0.0.1:4222")
    args = parser.parse_args()
    # The limiter runs (its cost counts) but never refuses: one client IP sends everything here.
    os.environ.update(RATE_LIMIT_IP_PER_SECOND="1e9", RATE_LIMIT_IP_BURST="1e9")
    asyncio.run(profile(args) if args.profile else measure(args))


if __name__ == "__main__":
    main()
