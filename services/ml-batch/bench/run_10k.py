"""10,000 streams × 100 points through one real ml-batch run (PostgreSQL + NATS). A measure.

    .venv/bin/python services/ml-batch/bench/run_10k.py [--streams 10000] [--points 100]

Creates a scratch database (writer-postgres migrations) and bus namespace, stores
``--streams`` streams (10 per source) of ``--points`` points one minute apart ending now, then
times one run (``MlJob.run_once``: load, compute, store, publish) and a second run, which must
find nothing new (watermarks). Prints wall time per phase and the CPU seconds the run cost in
this process and in its PostgreSQL backends (/proc), since wall time on a shared 2-core machine
mostly measures the neighbours. Removes the database and namespace.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import sys
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scratch import copy_points, scratch

from ml_batch.app import open_pool
from ml_batch.job import MlJob
from tributary_contracts import ensure_jetstream
from tributary_runtime.bus import connect_nats

CLOCK = os.sysconf("SC_CLK_TCK")


def backend_cpu(database: str) -> float:
    """CPU seconds (user + system) of the PostgreSQL backends connected to ``database``."""
    total = 0.0
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if database.encode() not in (entry / "cmdline").read_bytes():
                continue
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += (int(fields[11]) + int(fields[12])) / CLOCK
    return total


def own_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime

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
        database = sc.dsn.rsplit("/", 1)[1]
        nc = await connect_nats(settings, "ml-bench", reconnect_attempts=2)
        js = nc.jetstream()
        await ensure_jetstream(js, settings.namespace)
        pool = await open_pool(settings)
        try:
            job = MlJob(settings, pool, js)
            cpu0, db0 = own_cpu(), backend_cpu(database)
            started = time.perf_counter()
            first = await job.run_once()
            total = time.perf_counter() - started
            cpu, db = own_cpu() - cpu0, backend_cpu(database) - db0
            print(f"run 1: {total:.2f} s wall for {first.streams:,} streams "
                  f"({first.streams * args.points:,} points) — {first.summary()}")
            print(f"run 1 CPU: ml-batch process {cpu:.2f} s, PostgreSQL backends {db:.2f} s "
                  f"(sum {cpu + db:.2f} s); load average {os.getloadavg()[0]:.1f} on "
                  f"{os.cpu_count()} cores")
            started = time.perf_counter()
            second = await job.run_once()
            print(f"run 2 (nothing new): {time.perf_counter() - started:.2f} s — "
                  f"{second.summary()}")
        finally:
            await pool.close()
            await nc.close()
        ok = first.inserted == args.streams and first.published == args.streams
        ok = ok and second.streams == 0
        print("result:", "OK" if ok else "UNEXPECTED COUNTS", f"(target < 30 s: {total:.2f} s)")
        return 0 if ok else 1


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
