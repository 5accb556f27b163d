"""10,000 streams × 100 points through one real ml-batch run (PostgreSQL + NATS). A measure.

    .venv/bin/python services/ml-batch/bench/run_10k.py [--streams 10000] [--points 100]

Creates a scratch database (writer-postgres migrations) and bus namespace, stores
``--streams`` streams (10 per source) of ``--points`` points one minute apart ending now, then
times one run (``MlJob.run_once``: load, compute, store, publish) and a second run, which must
find nothing new (watermarks). Prints the timings; removes the database and namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scratch import copy_points, scratch

from ml_batch.app import once

TYPES = ("temperature", "cpu_usage", None)  # → taylor, ewma, trend (default ML_MODEL_BY_TYPE)


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=10_000)
    parser.add_argument("--points", type=int, default=100)
    args = parser.parse_args()
    rng = np.random.default_rng(7)
    now = datetime.now(UTC).replace(microsecond=0)
    times = [now - timedelta(minutes=args.points - 1 - i) for i in range(args.points)]
    values = 50 + rng.normal(0, 1, (args.streams, args.points)).cumsum(axis=1) * 0.2

    def rows():  # type: ignore[no-untyped-def]
        for s in range(args.streams):
            source, stream, stype = f"src-{s // 10:05d}", f"stream-{s % 10}", TYPES[s % 3]
            for i, t in enumerate(times):
                yield (t, "bench", source, stream, float(values[s, i]), stype)

    async with scratch("bench") as sc:
        started = time.perf_counter()
        await copy_points(sc.dsn, rows())
        print(f"stored {args.streams * args.points:,} points in "
              f"{time.perf_counter() - started:.1f} s (setup, not measured)")
        settings = sc.settings(ml_window_points=args.points)
        started = time.perf_counter()
        first = await once(settings)
        total = time.perf_counter() - started
        print(f"run 1: {total:.2f} s wall for {first.streams:,} streams "
              f"({first.streams * args.points:,} points) — {first.summary()}")
        started = time.perf_counter()
        second = await once(settings)
        print(f"run 2 (nothing new): {time.perf_counter() - started:.2f} s — {second.summary()}")
        ok = first.inserted == args.streams and first.published == args.streams
        ok = ok and second.streams == 0
        print("result:", "OK" if ok else "UNEXPECTED COUNTS", f"(target < 30 s: {total:.2f} s)")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
