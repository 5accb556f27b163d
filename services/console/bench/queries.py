"""How long the console's queries take on a filled table (not a test; prints a table).

    .venv/bin/python services/console/bench/queries.py [--points 1000000] [--streams 1000]

Creates a scratch database with writer-postgres's schema, COPYs ``--points`` points of one
stream (one a second, every 50th a warning) plus one point for each of ``--streams`` other
streams, then times, as the read-only role, what the explorer and the API run: the 400-bucket
downsampling over the whole range and over one hour, a page of 1000 raw points in the
middle, the streams listing. Drops the database at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import time
import uuid
from datetime import UTC, datetime, timedelta

import asyncpg

from console import queries
from console.queries import Reader, StreamKey, TimeRange
from console.scope import ReadScope
from writer_postgres.migrate import migrate


async def main(args: argparse.Namespace) -> None:
    name = f"console_bench_{uuid.uuid4().hex[:8]}"
    base = args.admin_dsn.rpartition("/")[0]
    dsn = f"{base}/{name}"
    await migrate(dsn)
    start = datetime.now(UTC).replace(microsecond=0) - timedelta(seconds=args.points)
    conn = await asyncpg.connect(dsn)
    try:
        t0 = time.perf_counter()
        await conn.copy_records_to_table(
            "data_points",
            columns=["time", "domain", "source_id", "stream_id", "value", "cls"],
            records=(
                (
                    start + timedelta(seconds=i),
                    "bench",
                    "src-0",
                    "cpu",
                    float(i % 100),
                    "warning" if i % 50 == 0 else "normal",
                )
                for i in range(args.points)
            ),
        )
        await conn.copy_records_to_table(
            "data_points",
            columns=["time", "domain", "source_id", "stream_id", "value", "cls"],
            records=(
                (start + timedelta(seconds=i), "bench", f"src-{i}", "cpu", 1.0, "normal")
                for i in range(1, args.streams + 1)
            ),
        )
        await conn.execute("ANALYZE data_points")
        print(
            f"loaded {args.points:,} + {args.streams:,} points in {time.perf_counter() - t0:.1f} s"
        )
    finally:
        await conn.close()
    host = base.rpartition("@")[2]
    reader = Reader(f"postgresql://tributary_reader@{host}/{name}", timeout=60)
    key = StreamKey("bench", "src-0", "cpu")
    whole = TimeRange(start, start + timedelta(seconds=args.points))
    hour = TimeRange(
        start + timedelta(seconds=args.points // 2),
        start + timedelta(seconds=args.points // 2 + 3600),
    )
    cases = {
        "400 buckets, whole range": lambda: queries.downsampled(
            reader, key, whole, None, queries.bucket_seconds(whole, 400)
        ),
        "400 buckets, one hour": lambda: queries.downsampled(
            reader, key, hour, None, queries.bucket_seconds(hour, 400)
        ),
        "page of 1000 points": lambda: queries.points(reader, key, hour, None, 1000, None),
        "warnings only, whole range, page of 1000": lambda: queries.points(
            reader, key, whole, ["warning"], 1000, None
        ),
        "streams listing (last 24 h)": lambda: queries.streams(
            reader, ReadScope(), start + timedelta(seconds=args.points) - timedelta(hours=24), 200
        ),
    }
    print("| query | median ms | runs |\n|---|---|---|")
    try:
        for label, run in cases.items():
            await run()  # warm
            timings = []
            for _ in range(args.runs):
                t = time.perf_counter()
                await run()
                timings.append((time.perf_counter() - t) * 1000)
            print(f"| {label} | {statistics.median(timings):.1f} | {args.runs} |")
    finally:
        await reader.close()
        admin = await asyncpg.connect(args.admin_dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--points", type=int, default=1_000_000)
    parser.add_argument("--streams", type=int, default=1_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--admin-dsn", default="postgresql://postgres@127.0.0.1:5432/postgres")
    asyncio.run(main(parser.parse_args()))
