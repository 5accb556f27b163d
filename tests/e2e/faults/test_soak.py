"""The soak (opt-in): 10 minutes of mixed transports at a steady load on the private servers.

Checks: RSS of every service flat within 10 % (mean of the last minute against the mean of the
second minute, after warm-up), consumer lag bounded, and the exact reconciliation (zero loss,
zero duplicates). ``TRIBUTARY_SOAK_SECONDS`` shortens or lengthens it (default 600).

    TRIBUTARY_SOAK=1 .venv/bin/python -m pytest -q -s tests/e2e/faults/test_soak.py
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path

import pytest

from tests.e2e.faults.conftest import PrivateServers
from tests.e2e.faults.load import Ledger, LoadPlan, run_load
from tests.e2e.faults.reconcile import consumer_lag, drain_and_reconcile
from tests.e2e.faults.test_faults import record
from tests.e2e.fleet_process import FleetProcess

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.soak]

SECONDS = float(os.environ.get("TRIBUTARY_SOAK_SECONDS", "600"))
SAMPLE_SECONDS = 5.0
MAX_LAG_MESSAGES = 500  # pending + unacked batches per consumer, at any sample
RSS_TOLERANCE = 0.10


def rss_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError(f"no VmRSS for pid {pid}")


async def test_ten_minutes_of_mixed_load_keep_memory_flat_lag_bounded_and_lose_nothing(
    fleet: FleetProcess, private_servers: PrivateServers
) -> None:
    # Points per second: HTTP 2 req × 20, WS 2 msg × 20, MQTT 20, CSV 400 rows × 2 every 10 s.
    plan = LoadPlan(
        tag="soak", duration=SECONDS, http_requests=int(2 * SECONDS), ws_messages=int(2 * SECONDS),
        mqtt_messages=int(20 * SECONDS), csv_jobs=max(1, int(SECONDS / 10)), csv_rows=400,
        invalid_every=50,
    )  # fmt: skip
    ledger = Ledger()
    pids = fleet.child_pids()
    samples: list[tuple[float, dict[str, int], dict[str, int]]] = []
    started = time.monotonic()
    load = asyncio.create_task(run_load(fleet, private_servers.mosquitto.port, plan, ledger))
    while not load.done() and time.monotonic() - started < SECONDS + 120:
        await asyncio.wait({load}, timeout=SAMPLE_SECONDS)
        now = fleet.child_pids()
        assert now == pids, f"a service restarted during the soak: {pids} → {now}"
        lag = await consumer_lag(fleet.nats_url, fleet.bus_prefix)
        samples.append((time.monotonic() - started, {s: rss_kib(p) for s, p in pids.items()}, lag))
    await load
    result = await drain_and_reconcile(
        ledger, plan.sources, fleet.postgres_dsn, fleet.nats_url, fleet.bus_prefix, timeout=120
    )
    record("soak", result, ledger, time.monotonic() - started)

    def mean_rss(lo: float, hi: float) -> dict[str, float]:
        window = [rss for t, rss, _ in samples if lo <= t < hi]
        assert window, f"no samples between {lo}s and {hi}s"
        return {s: sum(r[s] for r in window) / len(window) for s in pids}

    warm = mean_rss(SECONDS / 10, SECONDS / 5)  # the second minute of ten
    last = mean_rss(SECONDS * 0.9, SECONDS + 120)
    growth = {s: last[s] / warm[s] - 1 for s in pids}
    max_lag = {d: max(lag[d] for _, _, lag in samples) for d in samples[0][2]}
    print(f"soak RSS KiB warm={warm} last={last} growth={growth} max_lag={max_lag}")
    assert result.problems == []
    assert result.counts["duplicates"] == 0 and ledger.unresolved == set()
    assert all(g <= RSS_TOLERANCE for g in growth.values()), growth
    assert all(v <= MAX_LAG_MESSAGES for v in max_lag.values()), max_lag
