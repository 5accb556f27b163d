"""How fast the classifier clears a backlog of single readings from thousands of sources.

    .venv/bin/python services/classifier/bench/backlog.py [--points 100000] [--sources 2000]
        [--shape bundles|former] [--bundle-points 2000] [--replicas 1] [--partitions 4]
        [--configured]

Fills ``DP_RAW`` of a private namespace on the local NATS with ``--points`` one-point batches
(one reading per device, devices taking turns), either as the gateways publish them under load
(``bundles``: ``PointBundle``s of up to ``--bundle-points`` points per partition) or as the
former per-source subjects carried them (``former``: one message per reading, drained through
``classifier-drain-<p>``). Then starts ``--replicas`` ``python -m classifier`` processes and
prints, every second, the points classified so far (the replicas'
``classifier_published_points_total``) and the rate of that second, then the total rate.
``--configured`` gives every stream a
configuration (state, snapshots and checkpoint documents); without it the streams are
unconfigured, as in ``bench/run.py``. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta

import httpx
import nats

from tributary_contracts import (
    DP_RAW,
    STREAM_CONFIGS_BUCKET,
    DataPoint,
    Namespace,
    PointBatch,
    PointBundle,
    StreamConfig,
    ValueConstraints,
    ensure_jetstream,
    partition_of,
    stream_config_key,
)

T0 = datetime(2026, 3, 1, tzinfo=UTC)


def batches(points: int, sources: int) -> list[PointBatch]:
    return [
        PointBatch(
            domain="iot",
            source_id=f"dev-{n % sources:05d}",
            transport="mqtt",
            received_at=T0,
            points=[DataPoint(stream_id="s0", value=float(n % 50), ts=T0 + timedelta(seconds=n))],
        )
        for n in range(points)
    ]


async def fill(js: object, ns: Namespace, args: argparse.Namespace) -> int:
    """Publish the backlog; the number of messages."""
    todo = batches(args.points, args.sources)
    messages: list[tuple[str, bytes]] = []
    if args.shape == "former":
        messages = [
            (ns.raw_subject(b.domain, b.source_id), b.model_dump_json().encode()) for b in todo
        ]
    else:
        by_partition: dict[int, list[PointBatch]] = {}
        for b in todo:
            by_partition.setdefault(partition_of("iot", b.source_id, args.partitions), []).append(b)
        for p, members in by_partition.items():
            for i in range(0, len(members), args.bundle_points):
                bundle = PointBundle(
                    domain="iot", partition=p, batches=members[i : i + args.bundle_points]
                )
                messages.append(
                    (ns.raw_partition_subject("iot", p), bundle.model_dump_json().encode())
                )
    for i in range(0, len(messages), 2000):
        acks = [await js.publish_async(s, d) for s, d in messages[i : i + 2000]]  # type: ignore[attr-defined]
        await asyncio.gather(*acks)
    return len(messages)


async def classified_points(ports: list[int]) -> int:
    """Points the replicas published (their ``classifier_published_points_total``)."""
    total = 0.0
    async with httpx.AsyncClient(timeout=5) as client:
        for port in ports:
            try:
                text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
            except httpx.HTTPError:
                continue  # not up yet
            total += sum(
                float(line.split()[-1])
                for line in text.splitlines()
                if line.startswith("classifier_published_points_total{")
            )
    return int(total)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=100_000)
    parser.add_argument("--sources", type=int, default=2000)
    parser.add_argument("--shape", choices=("bundles", "former"), default="bundles")
    parser.add_argument("--bundle-points", type=int, default=2000)
    parser.add_argument("--replicas", type=int, default=1)
    parser.add_argument("--partitions", type=int, default=4)
    parser.add_argument("--configured", action="store_true")
    parser.add_argument("--timeout", type=float, default=600)
    args = parser.parse_args()

    prefix = f"bl{uuid.uuid4().hex[:8]}"
    ns = Namespace(prefix)
    nc = await nats.connect("nats://127.0.0.1:4222")
    js = nc.jetstream()
    processes: list[subprocess.Popen[bytes]] = []
    try:
        await ensure_jetstream(js, ns)
        if args.configured:
            kv = await js.key_value(ns.bucket(STREAM_CONFIGS_BUCKET))
            config = StreamConfig(value_constraints=ValueConstraints(warning_max=45))
            await kv.put(stream_config_key("iot", "*", "*"), config.model_dump_json().encode())
        started = time.monotonic()
        messages = await fill(js, ns, args)
        print(
            f"backlog: {args.points} points in {messages} {args.shape} messages, "
            f"{args.sources} sources ({time.monotonic() - started:.1f} s to publish)"
        )
        for k in range(args.replicas):
            env = {
                **os.environ,
                "BUS_PREFIX": prefix,
                "PORT": str(18900 + k),
                "LOG_LEVEL": "WARNING",
                "BUS_PARTITIONS": str(args.partitions),
                "CLASSIFIER_REPLICAS": str(args.replicas),
                "CLASSIFIER_REPLICA": str(k),
            }
            processes.append(subprocess.Popen([sys.executable, "-m", "classifier"], env=env))
        ports = [18900 + k for k in range(args.replicas)]
        async with httpx.AsyncClient(timeout=5) as client:  # the clock starts once all are up
            for port in ports:
                while True:
                    try:
                        if (await client.get(f"http://127.0.0.1:{port}/health")).status_code == 200:
                            break
                    except httpx.HTTPError:
                        pass
                    await asyncio.sleep(0.05)
        started = time.monotonic()
        previous = 0
        while time.monotonic() - started < args.timeout:
            await asyncio.sleep(0.5)
            done = await classified_points(ports)
            elapsed = time.monotonic() - started
            print(f"  t={elapsed:5.1f} s  classified {done:7d}  (+{done - previous} /s)")
            previous = done
            if done >= args.points:
                break
        elapsed = time.monotonic() - started
        pending = 0
        for info in await js.consumers_info(ns.stream(DP_RAW)):
            pending += info.num_pending + info.num_ack_pending
        print(
            f"classified {previous} of {args.points} points in {elapsed:.1f} s "
            f"after the replicas served /health: {previous / elapsed:,.0f} points/s; "
            f"left pending/unacked on DP_RAW: {pending}"
        )
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            process.wait(timeout=20)
        for base in ("DP_RAW", "DP_CLASSIFIED", "DP_EVENTS", "DP_REJECTED", "DP_DLQ", "AUDIT"):
            try:
                await js.delete_stream(ns.stream(base))
            except Exception:
                pass
        await nc.close()


if __name__ == "__main__":
    asyncio.run(main())
