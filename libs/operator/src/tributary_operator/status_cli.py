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
import json
import sys
from dataclasses import asdict
from typing import Any, TextIO

from tributary_contracts import DP_DLQ
from tributary_contracts.ports import SERVICE_PORTS, local_url
from tributary_runtime.fleet_status import Status, collect_bus, collect_services

LAG_WARNING = 10_000  # pending messages from which a consumer's lag shows in yellow

GREEN, YELLOW, RED, DIM, RESET = "\033[32m", "\033[33m", "\033[31m", "\033[2m", "\033[0m"


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
    defaults = {n: local_url(n, args.port_offset) for n in SERVICE_PORTS}
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
