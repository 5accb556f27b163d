"""What the fleet is doing, read from outside: each service's ``/health``, ``/ready`` and
``/metrics`` (rates from two scrapes, by the counter naming convention of CONVENTIONS.md,
Telemetry) and JetStream's view of the durable consumers and streams. Shared by the console's
fleet page and ``tributary status``.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tributary_contracts import CONSUMERS, DP_DLQ, Namespace
from tributary_contracts.jetstream import STREAMS


@dataclass
class ServiceStatus:
    name: str
    url: str
    up: bool = False
    ready: bool | None = None
    in_per_s: float | None = None  # points (or rows) received per second
    out_per_s: float | None = None  # points published / written per second
    errors_per_s: float | None = None
    error: str = ""


@dataclass
class ConsumerStatus:
    durable: str
    stream: str
    exists: bool = False
    num_pending: int = 0
    num_ack_pending: int = 0
    num_redelivered: int = 0


@dataclass
class StreamStatus:
    name: str
    exists: bool = False
    messages: int = 0
    bytes: int = 0
    consumers: int = 0
    replicas: int = 0
    leader: str = ""
    subjects: dict[str, int] = field(default_factory=dict)  # DLQ only: per dp.dlq.<consumer>


@dataclass
class Status:
    services: list[ServiceStatus]
    consumers: list[ConsumerStatus]
    streams: list[StreamStatus]
    nats_error: str = ""

    @property
    def dlq_depth(self) -> int:
        return sum(s.messages for s in self.streams if s.name.endswith(DP_DLQ))


def metric_totals(text: str) -> dict[str, float]:
    """Sample name → value summed over labels, for counters (``*_total``)."""
    totals: dict[str, float] = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name.endswith("_total"):
                totals[sample.name] = totals.get(sample.name, 0.0) + sample.value
    return totals


def _pick(
    totals: dict[str, float], *words: str, alternatives: tuple[str, ...] = ()
) -> float | None:
    """Sum of the counters whose name has every word of ``words`` and one of ``alternatives``."""
    names = [
        n
        for n in totals
        if all(w in n for w in words) and (not alternatives or any(a in n for a in alternatives))
    ]
    return sum(totals[n] for n in names) if names else None


def flow_counters(totals: dict[str, float]) -> tuple[float | None, float | None, float | None]:
    """(in, out, errors) from a service's counters, by the naming convention every service
    follows (CONVENTIONS.md, Telemetry): points received / published or written, errors."""
    received = _pick(totals, "received", "points")
    if received is None:
        received = _pick(totals, "received", alternatives=("rows", "messages"))
    out = _pick(totals, "points", alternatives=("published", "written"))
    errors = _pick(totals, "_errors_total")
    return received, out, errors


async def _scrape(client: httpx.AsyncClient, status: ServiceStatus) -> dict[str, float] | None:
    try:
        health = await client.get(status.url + "/health")
        status.up = health.status_code == 200
        if not status.up:
            status.error = f"/health answered {health.status_code}"
            return None
        ready = await client.get(status.url + "/ready")
        status.ready = ready.status_code == 200
        metrics = await client.get(status.url + "/metrics")
        return metric_totals(metrics.text) if metrics.status_code == 200 else None
    except httpx.HTTPError as exc:
        status.up = False
        status.error = type(exc).__name__
        return None


async def collect_services(urls: dict[str, str], interval: float) -> list[ServiceStatus]:
    statuses = [ServiceStatus(name, url) for name, url in urls.items()]
    async with httpx.AsyncClient(timeout=3.0) as client:
        first = await asyncio.gather(*(_scrape(client, s) for s in statuses))
        started = time.monotonic()
        if any(first):
            await asyncio.sleep(interval)
        second = await asyncio.gather(*(_scrape(client, s) for s in statuses))
        elapsed = max(time.monotonic() - started, 1e-3)
    for status, before, after in zip(statuses, first, second, strict=True):
        if before is None or after is None:
            continue
        rates = []
        for a, b in zip(flow_counters(before), flow_counters(after), strict=True):
            rates.append(None if a is None or b is None else max(b - a, 0.0) / elapsed)
        status.in_per_s, status.out_per_s, status.errors_per_s = rates
    return statuses


async def collect_bus(js: Any, ns: Namespace) -> tuple[list[ConsumerStatus], list[StreamStatus]]:
    # Every durable on our streams (the classifier's partition durables too), then the declared
    # ones that do not exist (that writer is not deployed).
    consumers = []
    for stream_def in STREAMS:
        stream = ns.stream(stream_def.base)
        try:
            infos = await js.consumers_info(stream)
        except Exception:  # stream missing: shown in the stream table
            continue
        for info in infos:
            if info.config.durable_name:
                consumers.append(ConsumerStatus(
                    info.config.durable_name,
                    stream,
                    exists=True,
                    num_pending=info.num_pending or 0,
                    num_ack_pending=info.num_ack_pending or 0,
                    num_redelivered=info.num_redelivered or 0,
                ))
    seen = {(c.stream, c.durable) for c in consumers}
    for durable, definition in CONSUMERS.items():
        if (definition.stream_name(ns), durable) not in seen:
            consumers.append(ConsumerStatus(durable, definition.stream_name(ns)))
    streams = []
    for stream_def in STREAMS:
        s = StreamStatus(ns.stream(stream_def.base))
        is_dlq = stream_def.base == DP_DLQ
        try:
            info = await js.stream_info(s.name, subjects_filter=">" if is_dlq else None)
        except Exception:
            streams.append(s)
            continue
        s.exists = True
        s.messages = info.state.messages
        s.bytes = info.state.bytes
        s.consumers = info.state.consumer_count
        s.replicas = info.config.num_replicas or 1
        s.leader = (info.cluster.leader or "") if info.cluster else ""
        if is_dlq:
            s.subjects = dict(sorted((info.state.subjects or {}).items()))
        streams.append(s)
    return consumers, streams
