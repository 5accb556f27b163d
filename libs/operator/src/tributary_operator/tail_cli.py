"""``tributary tail SUBJECT-FILTER``: print live messages of the bus, one line per point or event.

    tributary tail 'dp.classified.>'                  every classified point
    tributary tail 'dp.classified.*.critical.>'       critical points of any domain
    tributary tail 'dp.alert.>' --count 5             the next 5 alert events
    tributary tail 'dp.raw.iot.>' --seconds 10 --json raw IoT batches as JSON, for 10 s

The filter is relative to the namespace (``BUS_PREFIX``) and must start with ``dp.``. It is a
live subscription: it shows what flows from now on and changes nothing on the bus. It stops
after ``--count`` lines or ``--seconds``, whichever comes first.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from typing import Any, TextIO

from pydantic import ValidationError

from tributary_contracts import (
    AlertEvent,
    ClassifiedBatch,
    ClassifiedBundle,
    PointBatch,
    PointBundle,
    is_partition_subject,
)

COLOURS = {
    "normal": "\033[32m",
    "warning": "\033[33m",
    "critical": "\033[31m",
    "anomaly": "\033[35m",
    "rejected": "\033[2m",
}
RESET = "\033[0m"


def add_parser(commands: Any) -> None:
    tail = commands.add_parser(
        "tail",
        help="print live classified points, alerts or raw batches",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    tail.add_argument("subject_filter", metavar="SUBJECT-FILTER", help="e.g. 'dp.classified.>'")
    tail.add_argument("--count", type=int, default=100, help="stop after this many lines")
    tail.add_argument("--seconds", type=float, default=60.0, help="stop after this long")
    tail.add_argument("--json", action="store_true", help="print each message's JSON instead")
    tail.set_defaults(handler=run)


def check_filter(subject_filter: str) -> str:
    """The filter as given, or ValueError naming what is wrong with it."""
    tokens = subject_filter.split(".")
    if tokens[0] != "dp" or len(tokens) < 2:
        raise ValueError(
            f"the filter must start with 'dp.' (dp.classified.>, dp.alert.>, dp.raw.>…), "
            f"got {subject_filter!r}"
        )
    for i, token in enumerate(tokens):
        if not token or any(c.isspace() for c in token):
            raise ValueError(f"empty token or whitespace in the filter {subject_filter!r}")
        if ">" in token and (token != ">" or i != len(tokens) - 1):
            raise ValueError(f"'>' may only be the whole last token, in {subject_filter!r}")
        if "*" in token and token != "*":
            raise ValueError(f"'*' must be a whole token, in {subject_filter!r}")
    return subject_filter


def _when(value: Any) -> str:
    return str(value.isoformat()).replace("+00:00", "Z")


def format_message(relative_subject: str, data: bytes, colour: bool) -> list[str]:
    """Lines for one message: one per point of a batch, one per alert event."""
    kind = relative_subject.split(".")[1] if "." in relative_subject else ""
    try:
        if kind == "classified":
            batches = (
                ClassifiedBundle.model_validate_json(data).batches
                if is_partition_subject(relative_subject)
                else [ClassifiedBatch.model_validate_json(data)]
            )
            lines = []
            for batch in batches:
                paint = (COLOURS.get(batch.cls, ""), RESET) if colour else ("", "")
                lines += [
                    f"{_when(p.ts)}  {batch.domain}/{batch.source_id}/{p.stream_id}  "
                    f"{p.value:g}  {paint[0]}{batch.cls}{paint[1]}  {p.reason}"
                    for p in batch.points
                ]
            return lines
        if kind == "alert":
            event = AlertEvent.model_validate_json(data)
            paint = (COLOURS.get(event.severity, ""), RESET) if colour else ("", "")
            return [
                f"{_when(event.last_at)}  {event.domain}/{event.source_id}/{event.stream_id}  "
                f"{paint[0]}{event.event} {event.severity}{paint[1]}  value {event.last_value:g} "
                f"(peak {event.peak_value:g}, {event.violation_count} violations)  {event.reason}"
            ]
        if kind == "raw":
            raws = (
                PointBundle.model_validate_json(data).batches
                if is_partition_subject(relative_subject)
                else [PointBatch.model_validate_json(data)]
            )
            return [
                f"{_when(p.ts)}  {raw.domain}/{raw.source_id}/{p.stream_id}  {p.value:g}  "
                f"raw via {raw.transport}"
                for raw in raws
                for p in raw.points
            ]
    except ValidationError as exc:
        return [f"{relative_subject}: not a valid message ({exc.error_count()} errors)"]
    return [f"{relative_subject}: {data[:200].decode(errors='replace')}"]


async def tail(
    nc: Any,
    prefix: str,
    subject_filter: str,
    count: int,
    seconds: float,
    as_json: bool,
    out: TextIO,
) -> tuple[int, int]:
    """Print until ``count`` lines or ``seconds``; (lines, messages) printed."""
    queue: asyncio.Queue[Any] = asyncio.Queue(maxsize=10_000)

    async def on_message(msg: Any) -> None:
        if not queue.full():  # a slow terminal drops lines rather than the connection
            queue.put_nowait(msg)

    full = f"{prefix}.{subject_filter}" if prefix else subject_filter
    sub = await nc.subscribe(full, cb=on_message)
    await nc.flush()
    lines = messages = 0
    deadline = time.monotonic() + seconds
    colour = out.isatty() and not as_json
    try:
        while lines < count:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            try:
                msg = await asyncio.wait_for(queue.get(), timeout=remaining)
            except TimeoutError:
                break
            messages += 1
            relative = msg.subject[len(prefix) + 1 :] if prefix else msg.subject
            if as_json:
                try:
                    body = json.loads(msg.data)
                except ValueError:
                    body = msg.data.decode(errors="replace")
                printed = [json.dumps({"subject": relative, "message": body})]
            else:
                printed = format_message(relative, msg.data, colour)
            for line in printed[: count - lines]:
                out.write(line + "\n")
                lines += 1
            out.flush()
    finally:
        if not nc.is_closed:
            await sub.unsubscribe()
    return lines, messages


async def run(
    args: argparse.Namespace, settings: Any, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    from tributary_runtime.bus import connect_nats

    try:
        subject_filter = check_filter(args.subject_filter)
        if args.count < 1 or args.seconds <= 0:
            raise ValueError("--count must be >= 1 and --seconds > 0")
    except ValueError as exc:
        print(f"tributary tail: {exc}", file=err)
        return 2
    nc = await connect_nats(settings, "tributary-tail", reconnect_attempts=2)
    try:
        lines, messages = await tail(
            nc, settings.namespace.prefix, subject_filter, args.count, args.seconds, args.json, out
        )
    finally:
        await nc.close()
    print(f"tail: {lines} lines from {messages} messages", file=err)
    return 0
