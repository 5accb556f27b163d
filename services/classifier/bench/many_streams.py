"""The classifier alone with many distinct streams, each with its own config: points/s.

    .venv/bin/python services/classifier/bench/many_streams.py [--streams 10000] [--rounds 10]

Needs the local NATS (``NATS_URL``). In a fresh namespace (deleted afterwards): one exact
StreamConfig per stream (``--streams`` of them, over sources of 100 streams; limits vary per
stream, rate and consecutive rules set), then ``--rounds`` PointBatches per source, each with one
point per stream of that source, published to DP_RAW before the clock starts. The service then
runs in this process (``create_app`` lifespan) until the durable consumer has nothing pending or
unacked. Values are mostly inside the limits, with about 2 % of points violating, a few of which
open (and close) alerts. Reports wall time, points/s, CPU µs per point, alert events and
checkpoint writes. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import subprocess
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import nats
import orjson

from classifier.app import create_app
from classifier.consumers import ensure_durable
from classifier.metrics import ALERT_EVENTS, CHECKPOINT_WRITES
from classifier.settings import ClassifierSettings
from tributary_contracts import (
    DP_RAW,
    STREAM_CONFIGS_BUCKET,
    Namespace,
    StreamConfig,
    classifier_partition_consumer,
    classifier_partition_durable,
    ensure_jetstream,
    stream_config_key,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repo root, for tests.*
from tests.streams import drop_namespace

PER_SOURCE = 100
BUNDLE_SOURCES = 20  # 20 sources × 100 points: bundles of 2,000 points


def config_of(k: int) -> StreamConfig:
    limit = 80 + k % 15
    return StreamConfig.model_validate(
        {
            "value_constraints": {
                "min_value": 0,
                "max_value": 1000,
                "alert_max": limit + 10,
                "warning_max": limit,
            },
            "rate_constraints": {"abs_delta": 40, "severity": "anomaly"},
            "consecutive_violations_required": 2 + k % 3,
            "cooldown_seconds": 60,
        }
    )


def raw_messages(ns: Namespace, streams: int, rounds: int) -> list[tuple[str, bytes]]:
    """The workload: ``rounds`` PointBatches per source, one point per stream, ~2 % violating
    (the same for every run: seeded), as the gateways publish them: PointBundles of up to 20
    sources (2,000 points) on partition 0 (the benchmark runs with ``BUS_PARTITIONS`` 1)."""
    rng = random.Random(7)
    sources = (streams + PER_SOURCE - 1) // PER_SOURCE
    messages = []
    for r in range(rounds):
        batches = []
        for s in range(sources):
            count = min(PER_SOURCE, streams - s * PER_SOURCE)
            points = []
            for j in range(count):
                violating = rng.random() < 0.02
                value = rng.uniform(85, 99) if violating else rng.uniform(20, 60)
                points.append(
                    {
                        "stream_id": f"m{s * PER_SOURCE + j}",
                        "value": round(value, 2),
                        "ts": datetime.fromtimestamp(1_700_000_000 + r, UTC).isoformat(),
                    }
                )
            batches.append(
                {
                    "domain": "infrastructure",
                    "source_id": f"src-{s}",
                    "transport": "http",
                    "received_at": datetime.now(UTC).isoformat(),
                    "points": points,
                }
            )
        for first in range(0, len(batches), BUNDLE_SOURCES):
            bundle = {
                "domain": "infrastructure",
                "partition": 0,
                "batches": batches[first : first + BUNDLE_SOURCES],
            }
            subject = ns.raw_partition_subject("infrastructure", 0)
            messages.append((subject, orjson.dumps(bundle)))
    return messages


def start_py_spy(output: str) -> subprocess.Popen[bytes]:
    """py-spy sampling this process (raw collapsed stacks to ``output``) until terminated."""
    py_spy = os.path.join(os.path.dirname(sys.executable), "py-spy")
    return subprocess.Popen(
        [py_spy, "record", "-r", "200", "-f", "raw", "-o", output, "--pid", str(os.getpid())],
        stdout=subprocess.DEVNULL,
    )


async def run(streams: int, rounds: int, py_spy_output: str | None = None) -> None:
    url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    prefix = f"mbench{uuid.uuid4().hex[:8]}"
    ns = Namespace(prefix)
    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_jetstream(js, ns)
    sources = (streams + PER_SOURCE - 1) // PER_SOURCE
    try:
        await ensure_durable(js, ns, classifier_partition_consumer(0))
        bucket = ns.bucket(STREAM_CONFIGS_BUCKET)
        acks = []
        for k in range(streams):
            key = stream_config_key("infrastructure", f"src-{k // PER_SOURCE}", f"m{k}")
            acks.append(
                await js.publish_async(
                    f"$KV.{bucket}.{key}", config_of(k).model_dump_json().encode()
                )
            )
        await asyncio.gather(*acks)
        acks = []
        for subject, payload in raw_messages(ns, streams, rounds):
            acks.append(await js.publish_async(subject, payload))
        await asyncio.gather(*acks)

        settings = ClassifierSettings(
            nats_url=url,
            bus_prefix=prefix,
            log_level="WARNING",
            config_load_timeout_seconds=60,
            bus_partitions=1,
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            configs = len(app.state.store)
            spy = start_py_spy(py_spy_output) if py_spy_output else None
            wall, cpu, sys_cpu = time.perf_counter(), time.process_time(), os.times().system
            while True:
                info = await js.consumer_info(ns.stream(DP_RAW), classifier_partition_durable(0))
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    break
                await asyncio.sleep(0.02)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            sys_cpu = os.times().system - sys_cpu
            if spy is not None:
                spy.send_signal(2)  # SIGINT: py-spy writes its output and exits
                await asyncio.to_thread(spy.wait, 30)
            held = sum(len(p.state) for p in app.state.partitions)
        total = streams * rounds
        events = sum(
            s.value for m in ALERT_EVENTS.collect() for s in m.samples if s.name.endswith("_total")
        )
        print(
            f"{streams} streams / {configs} configs, {sources * rounds} messages, {total} points: "
            f"{wall:.2f} s, {total / wall:,.0f} points/s, CPU {cpu / total * 1e6:.1f} µs/pt "
            f"(system {sys_cpu / total * 1e6:.1f}); "
            f"alert events {events:.0f}, checkpoint writes asked "
            f"{CHECKPOINT_WRITES._value.get():.0f}, streams in memory {held}"
        )
    finally:
        await drop_namespace(js, ns)
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--rounds", type=int, default=10, help="points per stream")
    parser.add_argument(
        "--py-spy",
        metavar="FILE",
        help="sample the drain with py-spy (installed by hand in .venv) into FILE (raw stacks)",
    )
    args = parser.parse_args()
    asyncio.run(run(args.streams, args.rounds, args.py_spy))


if __name__ == "__main__":
    main()
