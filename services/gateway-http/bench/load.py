"""Load the gateway with requests of 100 points at a fixed rate; print reply latency percentiles.

    python services/gateway-http/bench/load.py --rate 300 --seconds 10

Starts ``python -m gateway_http`` on a fresh bus prefix (its streams are deleted afterwards),
creates an ingest key, then sends pre-built requests open-loop at ``--rate`` per second over
raw keep-alive HTTP/1.1 connections (httpx itself cost ~6 ms per request here, more than the
gateway) and reports reply latency from each request's due time (a 202 means every PubAck arrived).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import nats
from openloop import drive, drop_namespace, post_request, start_gateway, wait_ready

from tributary_access.apikeys import ApiKeyStore, Role
from tributary_contracts import API_KEYS_BUCKET, DP_RAW, Namespace, ensure_jetstream


def http_request(key: str, body: object) -> bytes:
    return post_request("/ingest/data", "X-API-Key", key, body)


async def ack_latency_summary(port: int) -> str:
    """p50/p99 upper bounds of the gateway's own publish→PubAck histogram (from /metrics)."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{port}") as client:
        text = (await client.get("/metrics")).text
    buckets = []
    for line in text.splitlines():
        if line.startswith("gateway_http_publish_ack_seconds_bucket"):
            bound = line.split('le="')[1].split('"')[0]
            buckets.append((float(bound), float(line.rsplit(" ", 1)[1])))
    total = buckets[-1][1]
    p50 = next(b for b, count in buckets if count >= total * 0.5)
    p99 = next(b for b, count in buckets if count >= total * 0.99)
    return f"gateway publish→PubAck p50 ≤ {p50 * 1000:g} ms, p99 ≤ {p99 * 1000:g} ms"


async def run(
    rate: int, seconds: float, points: int, port: int, nats_url: str, connections: int
) -> None:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    ns = Namespace(prefix)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_jetstream(js, ns)
    store = ApiKeyStore(await js.key_value(ns.bucket(API_KEYS_BUCKET)))
    key = await store.create(Role.SOURCE_WRITER)
    server = start_gateway(prefix, port, nats_url)
    try:
        await wait_ready(port)
        start_ts = datetime(2026, 1, 1, tzinfo=UTC)
        total = int(rate * seconds)
        requests = [
            http_request(
                key,
                {
                    "source_id": f"server-{i % 50}",
                    "domain": "infrastructure",
                    "data_points": [
                        {
                            "stream_id": f"s{j}",
                            "value": float(j),
                            "timestamp": (start_ts + timedelta(seconds=i)).isoformat(),
                        }
                        for j in range(points)
                    ],
                },
            )
            for i in range(total)
        ]
        replies = await drive(port, requests, rate, connections)
        print(await ack_latency_summary(port))
        stored = (await js.stream_info(ns.stream(DP_RAW))).state.messages
        print(replies.report("requests", points, "points", stored))
    finally:
        server.terminate()
        server.wait(10)
        await drop_namespace(js, ns)
        await nc.close()

def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rate", type=int, default=300, help="requests per second")
    parser.add_argument("--seconds", type=float, default=10)
    parser.add_argument("--points", type=int, default=100, help="points per request")
    parser.add_argument("--port", type=int, default=18001)
    parser.add_argument("--connections", type=int, default=16, help="keep-alive connections")
    parser.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    args = parser.parse_args()
    asyncio.run(
        run(args.rate, args.seconds, args.points, args.port, args.nats_url, args.connections)
    )


if __name__ == "__main__":
    main()
