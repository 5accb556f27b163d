"""The classifier service alone draining a pre-filled ``DP_RAW``: points/s and CPU µs per point.

    .venv/bin/python services/classifier/bench/drain.py [--messages 1000] [--points 100] [--profile]

Needs the local NATS (``NATS_URL``, default nats://127.0.0.1:4222). Works in a fresh namespace
(``BUS_PREFIX`` = ``cbench<random>``, deleted afterwards): puts a domain-wide config for stream
type ``cpu_usage`` (values above 80 are warnings), publishes ``--messages`` PointBatches of
``--points`` points, then starts the service in this process (``create_app`` lifespan) and
waits until the durable consumer has nothing pending or unacked. Reports wall time, points/s and
this process's CPU per point during the drain (publishing is done before the clock starts).
``--profile`` runs the drain under cProfile and prints the top functions. A benchmark, not a
test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import os
import pstats
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import nats
import orjson

from classifier.app import create_app
from classifier.metrics import ALERT_EVENTS, BATCH_SECONDS, CHECKPOINT_WRITES, ERRORS
from classifier.settings import ClassifierSettings
from tributary_contracts import (
    CLASSIFIER_DURABLE,
    DP_RAW,
    STREAM_CONFIGS_BUCKET,
    Namespace,
    StreamConfig,
    ensure_consumer,
    ensure_jetstream,
    stream_config_key,
)

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repo root, for tests.*
from tests.streams import drop_namespace


def raw_batch(source: int, start: int, points: int) -> bytes:
    return orjson.dumps(
        {
            "domain": "infrastructure",
            "source_id": f"bench-{source}",
            "transport": "http",
            "received_at": datetime.now(UTC).isoformat(),
            "points": [
                {
                    "stream_id": f"s{i % 10}",
                    "value": float(i % 100),
                    "ts": datetime.fromtimestamp(start + i, UTC).isoformat(),
                    "stream_type": "cpu_usage",
                }
                for i in range(points)
            ],
        }
    )


async def run(messages: int, points: int, profile: bool, consecutive: int) -> None:
    url = os.environ.get("NATS_URL", "nats://127.0.0.1:4222")
    prefix = f"cbench{uuid.uuid4().hex[:8]}"
    ns = Namespace(prefix)
    nc = await nats.connect(url)
    js = nc.jetstream()
    await ensure_jetstream(js, ns)
    try:
        await ensure_consumer(js, ns, CLASSIFIER_DURABLE)
        config = StreamConfig.model_validate(
            {
                "value_constraints": {"min_value": 0, "max_value": 1000, "operational_max": 80},
                "consecutive_violations_required": consecutive,
            }
        )
        kv = await js.key_value(ns.bucket(STREAM_CONFIGS_BUCKET))
        await kv.put(
            stream_config_key("infrastructure", "*", "cpu_usage"), config.model_dump_json().encode()
        )
        acks = []
        for m in range(messages):
            payload = raw_batch(m % 20, 1_700_000_000 + m * points, points)
            acks.append(
                await js.publish_async(ns.raw_subject("infrastructure", f"bench-{m % 20}"), payload)
            )
        await asyncio.gather(*acks)

        settings = ClassifierSettings(nats_url=url, bus_prefix=prefix, log_level="WARNING")
        app = create_app(settings)
        profiler = cProfile.Profile() if profile else None
        async with app.router.lifespan_context(app):
            wall, cpu = time.perf_counter(), time.process_time()
            if profiler:
                profiler.enable()
            while True:
                info = await js.consumer_info(ns.stream(DP_RAW), CLASSIFIER_DURABLE)
                if info.num_pending == 0 and info.num_ack_pending == 0:
                    break
                await asyncio.sleep(0.02)
            if profiler:
                profiler.disable()
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
        total = messages * points
        events = sum(
            s.value for m in ALERT_EVENTS.collect() for s in m.samples if s.name.endswith("_total")
        )
        print(
            f"{messages} × {points} points: {wall:.2f} s, {total / wall:,.0f} points/s, "
            f"CPU {cpu / total * 1e6:.1f} µs/pt; alert events {events:.0f}, "
            f"checkpoint writes asked by inputs {CHECKPOINT_WRITES._value.get():.0f}"
        )
        errors = {
            f"{s.labels['stage']}/{s.labels['error_type']}": s.value
            for m in ERRORS.collect()
            for s in m.samples
            if s.name.endswith("_total")
        }
        if errors:
            print(f"errors: {errors}")
        batch = {s.name: s.value for m in BATCH_SECONDS.collect() for s in m.samples}
        calls = batch["classifier_batch_seconds_count"]
        mean_ms = batch["classifier_batch_seconds_sum"] / calls * 1e3
        print(f"handler calls {calls:.0f}, mean {mean_ms:.1f} ms")
        if profiler:
            stats = pstats.Stats(profiler)
            stats.sort_stats("cumulative").print_stats(40)
            stats.sort_stats("tottime").print_stats(25)
    finally:
        await drop_namespace(js, ns)
        await nc.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--messages", type=int, default=1000)
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--profile", action="store_true")
    parser.add_argument(
        "--consecutive",
        type=int,
        default=3,
        help="consecutive_violations_required of the config; 1 makes every stream's two "
        "warnings per message open and close an alert (20 events per 100 points, worst case)",
    )
    args = parser.parse_args()
    asyncio.run(run(args.messages, args.points, args.profile, args.consecutive))


if __name__ == "__main__":
    main()
