"""Fleet status for the console: services (up, ready, rates, circuit breakers) from their
``/health``, ``/ready`` and ``/metrics``, scraped in the background; consumer lag, stream sizes
and DLQ depth from JetStream on each request (``tributary_runtime.fleet_status``, which
``tributary status`` uses too).

Rates are the difference of the services' counters between the two latest scrapes (the naming
convention every service follows, ``flow_counters``); a breaker is open when a service's
``*_circuit_open`` gauge is 1.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from dataclasses import asdict, dataclass, field
from typing import Any

import httpx
import structlog
from prometheus_client.parser import text_string_to_metric_families

from tributary_contracts import Namespace
from tributary_runtime.fleet_status import Status, collect_bus, flow_counters, metric_totals

log = structlog.get_logger("console.fleet")


@dataclass
class ServiceSample:
    name: str
    url: str
    up: bool = False
    ready: bool | None = None
    in_per_s: float | None = None
    out_per_s: float | None = None
    errors_per_s: float | None = None
    breakers_open: dict[str, bool] = field(default_factory=dict)
    error: str = ""
    scraped_at: float | None = None


def breaker_gauges(text: str) -> dict[str, bool]:
    """Gauge name → open, for every ``*_circuit_open`` gauge in a metrics page."""
    out: dict[str, bool] = {}
    for family in text_string_to_metric_families(text):
        if family.type == "gauge" and family.name.endswith("circuit_open"):
            for sample in family.samples:
                out[sample.name] = out.get(sample.name, False) or sample.value >= 1
    return out


class FleetSampler:
    """Scrapes every service each ``interval`` seconds in a background task."""

    def __init__(self, urls: dict[str, str], interval: float) -> None:
        self.interval = interval
        self.samples = {name: ServiceSample(name, url) for name, url in urls.items()}
        self._previous: dict[str, tuple[float, tuple[float | None, ...]]] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> None:
        self._task = asyncio.create_task(self._loop())

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _loop(self) -> None:
        async with httpx.AsyncClient(timeout=3.0) as client:
            while True:
                try:
                    await self.scrape(client)
                except Exception as exc:  # a scrape bug must not end the loop
                    log.warning("fleet_scrape_failed", error=repr(exc))
                await asyncio.sleep(self.interval)

    async def scrape(self, client: httpx.AsyncClient) -> None:
        await asyncio.gather(*(self._scrape_one(client, s) for s in self.samples.values()))

    async def _scrape_one(self, client: httpx.AsyncClient, sample: ServiceSample) -> None:
        now = time.monotonic()
        try:
            health = await client.get(sample.url + "/health")
            sample.up = health.status_code == 200
            if not sample.up:
                sample.error = f"/health answered {health.status_code}"
                return
            sample.ready = (await client.get(sample.url + "/ready")).status_code == 200
            metrics = await client.get(sample.url + "/metrics")
            sample.error = ""
        except httpx.HTTPError as exc:
            sample.up, sample.ready, sample.error = False, None, type(exc).__name__
            sample.in_per_s = sample.out_per_s = sample.errors_per_s = None
            self._previous.pop(sample.name, None)
            return
        finally:
            sample.scraped_at = time.time()
        if metrics.status_code != 200:
            return
        counters = flow_counters(metric_totals(metrics.text))
        sample.breakers_open = breaker_gauges(metrics.text)
        before = self._previous.get(sample.name)
        self._previous[sample.name] = (now, counters)
        if before is None:
            return
        elapsed = max(now - before[0], 1e-3)
        rates = [
            None if a is None or b is None else max(b - a, 0.0) / elapsed
            for a, b in zip(before[1], counters, strict=True)
        ]
        sample.in_per_s, sample.out_per_s, sample.errors_per_s = rates


async def fleet_status(sampler: FleetSampler, js: Any, ns: Namespace) -> dict[str, Any]:
    """Services as last scraped, consumers and streams as JetStream reports them now."""
    status = Status([], [], [])
    try:
        status.consumers, status.streams = await collect_bus(js, ns)
    except Exception as exc:
        status.nats_error = f"{type(exc).__name__}: {exc}"[:200]
    return {
        "services": [asdict(s) for s in sampler.samples.values()],
        "consumers": [
            {**asdict(c), "lag": c.num_pending + c.num_ack_pending} for c in status.consumers
        ],
        "streams": [asdict(s) for s in status.streams],
        "dlq_depth": status.dlq_depth,
        "breakers_open": sorted(
            f"{s.name}: {gauge}"
            for s in sampler.samples.values()
            for gauge, is_open in s.breakers_open.items()
            if is_open
        ),
        "nats_error": status.nats_error,
        "scrape_interval_seconds": sampler.interval,
    }
