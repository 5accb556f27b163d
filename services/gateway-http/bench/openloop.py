"""The open-loop HTTP driver both gateway-http benchmarks use (``load.py``, ``legacy_packets.py``).

Pre-built requests go out at a fixed rate over raw keep-alive HTTP/1.1 connections (httpx itself
cost ~6 ms per request here, more than the gateway); each reply's latency is measured from the
request's due time, so queueing on the client counts too.
"""

from __future__ import annotations

import asyncio
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import orjson

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repo root, for tests.*
# The scratch namespace teardown of load.py and legacy_packets.py:
from tests.streams import drop_namespace as drop_namespace


def start_gateway(prefix: str, port: int, nats_url: str) -> subprocess.Popen[bytes]:
    """``python -m gateway_http`` on ``port`` and the bus namespace ``prefix`` (warnings only)."""
    env = {
        **os.environ,
        "BUS_PREFIX": prefix,
        "PORT": str(port),
        "NATS_URL": nats_url,
        "LOG_LEVEL": "WARNING",
    }
    return subprocess.Popen([sys.executable, "-m", "gateway_http"], env=env)


def post_request(path: str, key_header: str, key: str, body: object) -> bytes:
    """One raw HTTP/1.1 POST of ``body`` as JSON."""
    content = orjson.dumps(body)
    head = (
        f"POST {path} HTTP/1.1\r\nHost: gateway\r\n{key_header}: {key}\r\n"
        f"Content-Type: application/json\r\nContent-Length: {len(content)}\r\n\r\n"
    )
    return head.encode() + content


async def wait_ready(port: int) -> None:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        for _ in range(300):
            try:
                if (await client.get("/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise RuntimeError("gateway did not become ready")


@dataclass
class Replies:
    elapsed: float = 0.0
    latencies: list[float] = field(default_factory=list)
    statuses: dict[str, int] = field(default_factory=dict)

    def report(self, what: str, per_request: int, unit: str, stored: int) -> str:
        total = len(self.latencies)
        q = statistics.quantiles(self.latencies, n=100)
        return (
            f"{total} {what} x {per_request} {unit} in {self.elapsed:.2f}s "
            f"({total * per_request / self.elapsed:,.0f} {unit}/s), statuses {self.statuses}, "
            f"batches stored {stored}\n"
            f"reply latency p50 {q[49] * 1000:.1f} ms, p99 {q[98] * 1000:.1f} ms, "
            f"max {max(self.latencies) * 1000:.1f} ms"
        )


async def drive(port: int, requests: list[bytes], rate: float, connections: int) -> Replies:
    """Send ``requests`` at ``rate`` per second over ``connections``; every reply is read."""
    queue: asyncio.Queue[tuple[float, bytes] | None] = asyncio.Queue()
    replies = Replies()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        while (item := await queue.get()) is not None:
            scheduled, request = item
            writer.write(request)
            head = await reader.readuntil(b"\r\n\r\n")
            length = next(
                int(line.split(b":")[1])
                for line in head.split(b"\r\n")
                if line.lower().startswith(b"content-length")
            )
            await reader.readexactly(length)
            replies.latencies.append(time.perf_counter() - scheduled)
            status = head[9:12].decode()
            replies.statuses[status] = replies.statuses.get(status, 0) + 1
        writer.close()

    workers = [asyncio.create_task(connection()) for _ in range(connections)]
    began = time.perf_counter()
    for i, request in enumerate(requests):
        due = began + i / rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        queue.put_nowait((due, request))
    for _ in workers:
        queue.put_nowait(None)
    await asyncio.gather(*workers)
    replies.elapsed = time.perf_counter() - began
    return replies
