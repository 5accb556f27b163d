"""CPU per point of the classifier's work on one raw message, stage by stage (no NATS).

    .venv/bin/python services/classifier/bench/cpu_per_point.py [--points 100] [--rounds 7]

One ``PointBatch`` of ``--points`` points over 10 streams (``cpu_usage``, values 0..points-1)
with a config that makes values above 80 warnings, so two classes come out. Stages, each timed
on its own: parse (``PointBatch.model_validate_json``), classify (``split_by_class``), encode
(``classified_batch_json`` of every class), ids (``batch_msg_id`` of every class), then all of
them in a row ("total", what the handler does per message) and, for comparison, the model path
(``classify_batch`` + ``model_dump_json``). Also "total, no config": every stream unconfigured.
Prints the median µs per point of ``--rounds`` rounds; the VM is noisy, so compare medians of
a few runs. A benchmark, not a test: it asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import orjson

from classifier.classify import ClassifierState, classify_batch, split_by_class
from classifier.encode import classified_batch_json
from tributary_contracts import PointBatch, StreamConfig, batch_msg_id


def raw_batch(points: int, start: int = 1_700_000_000) -> bytes:
    return orjson.dumps(
        {
            "domain": "infrastructure",
            "source_id": "bench-1",
            "transport": "http",
            "received_at": datetime.now(UTC).isoformat(),
            "points": [
                {
                    "stream_id": f"s{i % 10}",
                    "value": float(i),
                    "ts": datetime.fromtimestamp(start + i, UTC).isoformat(),
                    "stream_type": "cpu_usage",
                }
                for i in range(points)
            ],
        }
    )


def calls_per_round(points: int) -> int:
    return max(1, 20_000 // points)


def per_point(fn: Callable[[], Any], points: int, rounds: int) -> float:
    """Median over ``rounds`` of µs per point, each round long enough (~0.2 s) to time."""
    calls = calls_per_round(points)
    samples = []
    for _ in range(rounds):
        started = time.perf_counter()
        for _ in range(calls):
            fn()
        samples.append((time.perf_counter() - started) / calls / points * 1e6)
    return statistics.median(samples)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--points", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=7)
    args = parser.parse_args()
    n = args.points

    raw = raw_batch(n)
    config = StreamConfig.model_validate(
        {"value_constraints": {"min_value": 0, "max_value": 1000, "operational_max": 80}}
    )
    config.version = 3

    def configured(*_: Any) -> StreamConfig:
        return config

    def unconfigured(*_: Any) -> None:
        return None

    state = ClassifierState()
    batch = PointBatch.model_validate_json(raw)
    now = datetime.now(UTC)
    groups = split_by_class(batch, configured, ClassifierState())
    # Every call must see new points (a repeated one is a redelivery, a cheaper path): batches
    # whose timestamps follow each other, parsed beforehand, enough for every round and stage.
    needed = calls_per_round(n) * args.rounds * 4 + 8
    fresh_raw = [raw_batch(n, 1_700_000_000 + k * n) for k in range(needed)]
    fresh = iter([PointBatch.model_validate_json(r) for r in fresh_raw])
    fresh_raw_iter = iter(fresh_raw)

    def encode() -> None:
        for cls, points in groups.items():
            classified_batch_json(batch, cls, now, points)

    def ids() -> None:
        for cls, points in groups.items():
            batch_msg_id(
                batch.domain, batch.source_id, [(p.stream_id, p.ts) for p, _, _ in points], cls
            )

    def handler_path(resolve: Callable[..., StreamConfig | None]) -> Callable[[], None]:
        def run() -> None:
            parsed = PointBatch.model_validate_json(next(fresh_raw_iter))
            classified_at = datetime.now(UTC)
            for cls, points in split_by_class(parsed, resolve, state).items():
                batch_msg_id(
                    parsed.domain,
                    parsed.source_id,
                    [(p.stream_id, p.ts) for p, _, _ in points],
                    str(cls),
                )
                classified_batch_json(parsed, cls, classified_at, points)

        return run

    def model_path() -> None:
        parsed = PointBatch.model_validate_json(next(fresh_raw_iter))
        for out in classify_batch(parsed, configured, state):
            batch_msg_id(
                out.domain, out.source_id, [(p.stream_id, p.ts) for p in out.points], str(out.cls)
            )
            out.model_dump_json().encode()

    stages: list[tuple[str, Callable[[], Any]]] = [
        ("parse", lambda: PointBatch.model_validate_json(raw)),
        ("classify", lambda: split_by_class(next(fresh), configured, state)),
        ("classify, no config", lambda: split_by_class(next(fresh), unconfigured, state)),
        ("encode", encode),
        ("ids", ids),
        ("total", handler_path(configured)),
        ("total, no config", handler_path(unconfigured)),
        ("total, model path", model_path),
    ]
    print(f"{n}-point batch, {', '.join(f'{c}: {len(p)}' for c, p in groups.items())}")
    for name, fn in stages:
        print(f"{name:22} {per_point(fn, n, args.rounds):6.2f} µs/pt")


if __name__ == "__main__":
    main()
