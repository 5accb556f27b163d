"""Classifier memory when one source invents stream ids (issue 21, finding 7).

    .venv/bin/python services/classifier/bench/stream_ids.py [--ids 630000]
        [--max-streams-per-source 10000]

Starts ``python -m classifier`` on a private namespace of the local NATS with every stream
configured (a domain default, so every stream would get state), publishes ``--ids`` points of
one source, each with a new stream id (bundles of 4 × 500 points), waits until all are
classified and prints the process's RSS before and after. A benchmark: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
import nats

from tributary_contracts import (
    STREAM_CONFIGS_BUCKET,
    DataPoint,
    Namespace,
    PointBatch,
    PointBundle,
    StreamConfig,
    ValueConstraints,
    ensure_jetstream,
    stream_config_key,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)
PORT = 18950


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return 0.0


async def published(client: httpx.AsyncClient) -> float:
    try:
        text = (await client.get(f"http://127.0.0.1:{PORT}/metrics")).text
    except httpx.HTTPError:
        return 0.0
    return sum(
        float(line.split()[-1])
        for line in text.splitlines()
        if line.startswith("classifier_published_points_total{")
    )


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--ids", type=int, default=630_000)
    parser.add_argument("--max-streams-per-source", type=int, default=10_000)
    args = parser.parse_args()
    prefix = f"sid{uuid.uuid4().hex[:8]}"
    ns = Namespace(prefix)
    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    env = {
        **os.environ,
        "BUS_PREFIX": prefix,
        "PORT": str(PORT),
        "LOG_LEVEL": "WARNING",
        "BUS_PARTITIONS": "1",
        "MAX_STREAMS_PER_SOURCE": str(args.max_streams_per_source),
    }
    process = None
    try:
        await ensure_jetstream(js, ns)
        kv = await js.key_value(ns.bucket(STREAM_CONFIGS_BUCKET))
        config = StreamConfig(value_constraints=ValueConstraints(warning_max=45))
        await kv.put(stream_config_key("iot", "*", "*"), config.model_dump_json().encode())
        process = subprocess.Popen([sys.executable, "-m", "classifier"], env=env)
        async with httpx.AsyncClient(timeout=5) as client:
            while True:
                try:
                    if (await client.get(f"http://127.0.0.1:{PORT}/ready")).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                await asyncio.sleep(0.2)
            before = rss_mb(process.pid)
            started = time.monotonic()
            for first in range(0, args.ids, 2000):
                batches = [
                    PointBatch(
                        domain="iot",
                        source_id="one-key",
                        transport="http",
                        received_at=T0,
                        points=[
                            DataPoint(stream_id=f"id-{n}", value=1.0, ts=T0)
                            for n in range(b, min(b + 500, args.ids))
                        ],
                    )
                    for b in range(first, min(first + 2000, args.ids), 500)
                ]
                bundle = PointBundle(domain="iot", partition=0, batches=batches)
                await js.publish(
                    ns.raw_partition_subject("iot", 0), bundle.model_dump_json().encode()
                )
            while await published(client) < args.ids:
                await asyncio.sleep(0.5)
            elapsed = time.monotonic() - started
            await asyncio.sleep(2)
            after = rss_mb(process.pid)
        print(
            f"{args.ids} new stream ids of one source, MAX_STREAMS_PER_SOURCE "
            f"{args.max_streams_per_source}: classified in {elapsed:.1f} s "
            f"({args.ids / elapsed:,.0f} points/s); "
            f"classifier RSS {before:.0f} MB -> {after:.0f} MB"
        )
    finally:
        if process is not None:
            process.terminate()
            process.wait(timeout=20)
        for base in ("DP_RAW", "DP_CLASSIFIED", "DP_EVENTS", "DP_REJECTED", "DP_DLQ", "AUDIT"):
            try:
                await js.delete_stream(ns.stream(base))
            except Exception:
                pass
        for bucket in ("stream-configs", "classifier-state"):
            try:
                await js.delete_key_value(ns.bucket(bucket))
            except Exception:
                pass
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
