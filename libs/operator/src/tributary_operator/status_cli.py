"""``tributary status``: one screen for an operator — is every service up, how fast is it going,
how far behind are the durable consumers, how deep is the DLQ, how big are the streams.

Services: every one at 127.0.0.1 on its standard port (plus ``--port-offset``), or only those
named with ``--service NAME[=URL]`` (repeatable; without URL, the local default). Rates come
from two scrapes of each service's ``/metrics`` ``--interval`` seconds apart; lag from
JetStream consumer info (``num_pending`` not yet delivered, ``num_ack_pending`` delivered and
not yet acked). ``--json`` prints the same data for scripts. Exit code: 0 when every service
answered ``/health`` and NATS was reachable, 1 otherwise.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from dataclasses import asdict, dataclass, field
from typing import Any, TextIO

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tributary_contracts import CONSUMERS, DP_DLQ, Namespace
from tributary_contracts.jetstream import STREAMS

# Every service's standard HTTP port (its settings' default). The one table: tests/deploy holds
# compose, k8s and the settings to it; the e2e fleet helper derives its ports from it.
SERVICE_PORTS = {
    "gateway-http": 8001,
    "gateway-ws": 8002,
    "csv-importer": 8003,
    "gateway-mqtt": 8004,
    "classifier": 8010,
    "writer-postgres": 8020,
    "writer-sqlserver": 8021,
    "ml-batch": 8030,
    "console": 8040,
}
LAG_WARNING = 10_000  # pending messages from which a consumer's lag shows in yellow

GREEN, YELLOW, RED, DIM, RESET = "\033[32m", "\033[33m", "\033[31m", "\033[2m", "\033[0m"


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


def add_parser(commands: Any) -> None:
    status = commands.add_parser(
        "status",
        help="services up/down and rates, consumer lag, DLQ depth, stream sizes",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    status.add_argument(
        "--service",
        action="append",
        default=[],
        metavar="NAME[=URL]",
        help="show this service (repeatable; default: all at their local ports), "
        "e.g. gateway-http=http://gw:8001",
    )
    status.add_argument(
        "--port-offset", type=int, default=0, help="added to the default local ports"
    )
    status.add_argument(
        "--interval", type=float, default=2.0, help="seconds between the two metric scrapes"
    )
    status.add_argument("--json", action="store_true", help="machine-readable output")
    status.set_defaults(handler=run)


def service_urls(args: argparse.Namespace) -> dict[str, str]:
    """Name → base URL: every service at its local default, or only the ``--service`` ones."""
    defaults = {n: f"http://127.0.0.1:{p + args.port_offset}" for n, p in SERVICE_PORTS.items()}
    if not args.service:
        return defaults
    urls = {}
    for item in args.service:
        name, sep, url = item.partition("=")
        if not sep and name in defaults:
            urls[name] = defaults[name]
        elif sep and name and url.startswith(("http://", "https://")):
            urls[name] = url.rstrip("/")
        else:
            raise ValueError(
                f"--service expects a service name or NAME=http://host:port, got {item!r}"
            )
    return urls


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


def _rate(value: float | None) -> str:
    return "-" if value is None else f"{value:,.1f}"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:,.0f} {unit}" if unit == "B" else f"{n:,.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)


def _table(rows: list[list[str]], colours: list[list[str]], colour: bool) -> str:
    widths = [max(len(r[i]) for r in rows) for i in range(len(rows[0]))]
    lines = []
    for r, c in zip(rows, colours, strict=True):
        cells = []
        for i, cell in enumerate(r):
            padded = cell.ljust(widths[i])
            cells.append(f"{c[i]}{padded}{RESET}" if colour and c[i] else padded)
        lines.append("  ".join(cells).rstrip())
    return "\n".join(lines)


def render(status: Status, colour: bool) -> str:
    """The three tables; ``colour`` adds ANSI colours (on a terminal)."""
    rows = [["SERVICE", "STATE", "IN/s", "OUT/s", "ERR/s", "URL"]]
    colours = [[DIM] * 6]
    for s in status.services:
        state = ("up" if s.ready is not False else "up (not ready)") if s.up else "down"
        rows.append(
            [s.name, state, _rate(s.in_per_s), _rate(s.out_per_s), _rate(s.errors_per_s), s.url]
        )
        state_colour = GREEN if s.up and s.ready is not False else YELLOW if s.up else RED
        err_colour = RED if s.errors_per_s else ""
        colours.append(["", state_colour, "", "", err_colour, DIM])
    out = [_table(rows, colours, colour), ""]
    if status.nats_error:
        out.append(f"{RED if colour else ''}NATS: {status.nats_error}{RESET if colour else ''}")
        return "\n".join(out)
    rows = [["CONSUMER", "STREAM", "PENDING", "ACK PENDING", "REDELIVERED"]]
    colours = [[DIM] * 5]
    for c in status.consumers:
        if not c.exists:
            rows.append([c.durable, c.stream, "-", "-", "not created"])
            colours.append([DIM] * 5)
            continue
        lag = c.num_pending + c.num_ack_pending
        rows.append(
            [
                c.durable,
                c.stream,
                f"{c.num_pending:,}",
                f"{c.num_ack_pending:,}",
                f"{c.num_redelivered:,}",
            ]
        )
        colours.append(["", "", YELLOW if lag >= LAG_WARNING else GREEN, "", ""])
    out += [_table(rows, colours, colour), ""]
    rows = [["STREAM", "MESSAGES", "SIZE", "CONSUMERS", "REPLICAS", "LEADER"]]
    colours = [[DIM] * 6]
    for st in status.streams:
        if not st.exists:
            rows.append([st.name, "-", "-", "-", "-", "missing (run tributary bootstrap)"])
            colours.append(["", "", "", "", "", RED])
            continue
        rows.append(
            [
                st.name,
                f"{st.messages:,}",
                _size(st.bytes),
                str(st.consumers),
                str(st.replicas),
                st.leader,
            ]
        )
        is_dlq = st.name.endswith(DP_DLQ)
        colours.append(["", RED if is_dlq and st.messages else "", "", "", "", ""])
    out.append(_table(rows, colours, colour))
    dlq = [st for st in status.streams if st.name.endswith(DP_DLQ) and st.subjects]
    dlq_line = f"DLQ depth: {status.dlq_depth:,}"
    if dlq:
        dlq_line += " (" + ", ".join(f"{k}: {v:,}" for k, v in dlq[0].subjects.items()) + ")"
    out += [
        "",
        f"{RED if colour and status.dlq_depth else ''}{dlq_line}"
        f"{RESET if colour and status.dlq_depth else ''}",
    ]
    return "\n".join(out)


async def collect(args: argparse.Namespace, settings: Any, nc: Any | None) -> Status:
    services = await collect_services(service_urls(args), args.interval)
    status = Status(services, [], [])
    if nc is None:
        status.nats_error = f"cannot reach NATS at {settings.nats_url}"
        return status
    status.consumers, status.streams = await collect_bus(nc.jetstream(), settings.namespace)
    return status


async def run(
    args: argparse.Namespace, settings: Any, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    from tributary_runtime.bus import connect_nats

    try:
        service_urls(args)
    except ValueError as exc:
        print(f"tributary status: {exc}", file=err)
        return 2
    try:
        nc = await connect_nats(settings, "tributary-status", reconnect_attempts=1)
    except Exception:  # still show the services: the bus being down is part of the answer
        nc = None
    try:
        status = await collect(args, settings, nc)
    finally:
        if nc is not None:
            await nc.close()
    if args.json:
        out.write(json.dumps({**asdict(status), "dlq_depth": status.dlq_depth}, indent=2) + "\n")
    else:
        out.write(render(status, colour=out.isatty()) + "\n")
    return 0 if all(s.up for s in status.services) and not status.nats_error else 1
