"""Precision and recall of ``is_anomaly`` on generated streams with known anomalies. A measure.

    .venv/bin/python services/ml-batch/bench/quality.py [--streams 1000] [--seed 1]

Generates ``--streams`` streams of 100 points one minute apart ending now, on four base
patterns (white noise, noise + linear trend, noise + daily-like sine, AR(1) noise), each with
noise sigma 1 on a random level. Half get an anomaly in their latest points, where a run that
keeps up with the data would see it (an anomaly is judged when its points arrive):

- ``spike``: the latest point off by 4–12 sigma;
- ``shift``: a level shift of 3–8 sigma starting 1–3 points before the end;
- ``drift``: a ramp starting 20 points before the end, reaching 4–12 sigma at the end.

Everything goes through a real run (scratch PostgreSQL database with writer-postgres
migrations, scratch bus namespace), and the ``is_anomaly`` column is compared with the truth.
"""

from __future__ import annotations

import argparse
import asyncio
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
from scratch import copy_points, scratch

from ml_batch.app import once

PATTERNS = ("noise", "trend", "seasonal", "ar1")
KINDS = ("spike", "shift", "drift")
N = 100


def generate(rng: np.random.Generator, pattern: str, kind: str | None) -> np.ndarray:
    t = np.arange(N, dtype=np.float64)
    noise = rng.normal(0, 1, N)
    if pattern == "ar1":  # correlated noise, stationary sigma 1
        ar = np.zeros(N)
        for i in range(1, N):
            ar[i] = 0.7 * ar[i - 1] + noise[i] * np.sqrt(1 - 0.49)
        noise = ar
    y = rng.uniform(-100, 100) + noise
    if pattern == "trend":
        y += rng.uniform(-0.2, 0.2) * t
    elif pattern == "seasonal":
        y += 3.0 * np.sin(2 * np.pi * t / rng.uniform(40, 80) + rng.uniform(0, 6.3))
    sign = rng.choice([-1.0, 1.0])
    if kind == "spike":
        y[-1] += sign * rng.uniform(4, 12)
    elif kind == "shift":
        y[N - int(rng.integers(1, 4)) :] += sign * rng.uniform(3, 8)
    elif kind == "drift":
        y[N - 20 :] += sign * np.linspace(0, rng.uniform(4, 12), 21)[1:]
    return y


async def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--streams", type=int, default=1000)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--threshold", type=float, default=None,
                        help="ML_ANOMALY_THRESHOLD to test (default: the setting's default)")
    args = parser.parse_args()
    rng = np.random.default_rng(args.seed)
    now = datetime.now(UTC).replace(microsecond=0)
    times = [now - timedelta(minutes=N - 1 - i) for i in range(N)]
    truth: dict[str, tuple[str, str | None]] = {}
    rows = []
    for i in range(args.streams):
        pattern = PATTERNS[(i // 2) % len(PATTERNS)]
        kind = KINDS[(i // 8) % len(KINDS)] if i % 2 else None
        source = f"q-{i:05d}"
        truth[source] = (pattern, kind)
        for t, v in zip(times, generate(rng, pattern, kind), strict=True):
            rows.append((t, "quality", source, "value", float(v), None))

    async with scratch("quality") as sc:
        await copy_points(sc.dsn, rows)
        overrides = {} if args.threshold is None else {"ml_anomaly_threshold": args.threshold}
        settings = sc.settings(**overrides)
        result = await once(settings)
        conn = await asyncpg.connect(sc.dsn)
        try:
            found = {
                r["source_id"]: (r["is_anomaly"], r["anomaly_score"])
                for r in await conn.fetch(
                    "SELECT source_id, is_anomaly, anomaly_score FROM predictions"
                )
            }
        finally:
            await conn.close()

    print(f"{result.summary()}")
    print(f"threshold (robust z) = {settings.ml_anomaly_threshold}, "
          f"score points = {settings.ml_score_points}, window = {settings.ml_window_points}")
    tp = fp = fn = tn = 0
    by_kind: Counter[str] = Counter()
    hit_pattern: Counter[str] = Counter()
    anomalous_pattern: Counter[str] = Counter()
    kind_total: Counter[str] = Counter()
    fp_by_pattern: Counter[str] = Counter()
    clean_by_pattern: Counter[str] = Counter()
    for source, (pattern, kind) in truth.items():
        flagged = found[source][0]
        if kind:
            kind_total[kind] += 1
            by_kind[kind] += flagged
            anomalous_pattern[pattern] += 1
            hit_pattern[pattern] += flagged
            tp += flagged
            fn += not flagged
        else:
            clean_by_pattern[pattern] += 1
            fp_by_pattern[pattern] += flagged
            fp += flagged
            tn += not flagged
    precision = tp / (tp + fp) if tp + fp else float("nan")
    recall = tp / (tp + fn) if tp + fn else float("nan")
    print(f"streams={len(truth)} anomalous={tp + fn} clean={fp + tn}")
    print(f"precision={precision:.3f} recall={recall:.3f}  (tp={tp} fp={fp} fn={fn} tn={tn})")
    print("recall by kind: " + ", ".join(
        f"{k}={by_kind[k] / kind_total[k]:.2f} ({by_kind[k]}/{kind_total[k]})" for k in KINDS))
    print("recall by base pattern: " + ", ".join(
        f"{p}={hit_pattern[p] / anomalous_pattern[p]:.2f}" for p in PATTERNS))
    print("false positives by base pattern: " + ", ".join(
        f"{p}={fp_by_pattern[p]}/{clean_by_pattern[p]}" for p in PATTERNS))
    return 0


if __name__ == "__main__":
    raise SystemExit(asyncio.run(main()))
