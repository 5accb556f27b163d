"""Benchmark (not a test): CPU of ``tributary_ingest.points.parse_json`` (parse + duplicate-key
check) on the bodies producers send, best of ``--rounds``.

    .venv/bin/python libs/ingest/bench/parse_json.py [--rounds 3]

Bodies: an ``/ingest/data`` request of 1 and of 100 points, with epoch-second timestamps (no
colon inside any string) and with ISO 8601 ones (two colons in each timestamp string).
"""

from __future__ import annotations

import argparse
import time

import orjson

from tributary_ingest.points import parse_json


def body(points: int, iso: bool) -> bytes:
    data_points = [
        {
            "stream_id": f"s{n % 10}",
            "value": float(n),
            "timestamp": f"2026-01-01T00:00:{n % 60:02d}Z" if iso else 1767225600 + n,
        }
        for n in range(points)
    ]
    return orjson.dumps(
        {"source_id": "bench-1", "domain": "infrastructure", "data_points": data_points}
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    for points, iso, calls in ((1, False, 20_000), (1, True, 20_000), (100, False, 1_000),
                               (100, True, 1_000)):  # fmt: skip
        data = body(points, iso)
        best = float("inf")
        for _ in range(args.rounds):
            started = time.process_time()
            for _ in range(calls):
                parse_json(data)
            best = min(best, (time.process_time() - started) / calls)
        stamps = "ISO" if iso else "epoch"
        print(f"{points:3d} point(s), {stamps:5s} timestamps: {1e6 * best:7.1f} µs per body")


if __name__ == "__main__":
    main()
