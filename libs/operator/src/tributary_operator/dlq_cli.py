"""``tributary dlq list|replay``: what the consumers gave up on, and putting it back once fixed.

    tributary dlq list [--consumer writer-postgres] [--limit 50] [--json]
    tributary dlq replay SEQ [SEQ…] [--dry-run] [--delete]
    tributary dlq replay --all [--consumer classifier] [--limit 1000] [--dry-run] [--delete]

A dead letter (libs/contracts dead_letters.py) is the refused payload, unchanged, with headers
saying which consumer gave up, why, on which subject and after how many deliveries. ``replay``
republishes the payload to that original subject with a new ``Nats-Msg-Id`` (the original id
would be dropped by JetStream's duplicate window) — but only when that is safe:

- the original subject is a data subject of this namespace (``dp.raw.``, ``dp.classified.``,
  ``dp.alert.``), never the DLQ or the rejected subjects (no loops);
- the payload is a valid message of that subject's contract (a payload that failed validation
  would only come back to the DLQ), and its domain/source/class match the subject;
- what it lands on is idempotent: writers store each point once (unique key), the classifier's
  output ids are deterministic, so a point already stored is not stored again.

Each refusal is printed with its reason. ``--delete`` removes a dead letter once its replay is
acknowledged by JetStream. Exit code 1 when any requested dead letter was not replayed.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import sys
from dataclasses import dataclass
from datetime import datetime
from typing import Any, TextIO

from pydantic import ValidationError

from tributary_contracts import (
    DLQ_CONSUMER,
    DLQ_DELIVERIES,
    DLQ_KIND,
    DLQ_REASON,
    DLQ_SUBJECT,
    DP_CLASSIFIED,
    DP_DLQ,
    DP_EVENTS,
    DP_RAW,
    MSG_ID_HEADER,
    AlertEvent,
    ClassifiedBatch,
    ClassifiedBundle,
    Namespace,
    PointBatch,
    PointBundle,
    is_partition_subject,
)

REPLAYED_FROM = "Tributary-Replayed-From"
MAX_SCAN = 100_000  # sequence numbers looked at by one list/replay, at most


@dataclass
class DeadLetter:
    seq: int
    subject: str  # dp.dlq.<consumer> (full)
    time: datetime | None
    headers: dict[str, str]
    data: bytes

    @property
    def consumer(self) -> str:
        return self.headers.get(DLQ_CONSUMER, "")

    @property
    def original_subject(self) -> str:
        return self.headers.get(DLQ_SUBJECT, "")


def add_parser(commands: Any) -> None:
    dlq = commands.add_parser(
        "dlq",
        help="list or replay dead letters",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = dlq.add_subparsers(dest="dlq_command", required=True)
    listing = sub.add_parser("list", help="dead letters, newest first")
    listing.add_argument("--consumer", help="only this consumer's (classifier, writer-postgres…)")
    listing.add_argument("--limit", type=int, default=50, help="show at most this many")
    listing.add_argument("--json", action="store_true", help="one JSON object per line")
    listing.set_defaults(handler=run_list)
    replay = sub.add_parser("replay", help="republish dead letters to their original subject")
    replay.add_argument("seqs", nargs="*", type=int, metavar="SEQ", help="DLQ sequence numbers")
    replay.add_argument("--all", action="store_true", help="every dead letter (up to --limit)")
    replay.add_argument("--consumer", help="with --all: only this consumer's")
    replay.add_argument("--limit", type=int, default=1000, help="with --all: at most this many")
    replay.add_argument("--dry-run", action="store_true", help="say what would be replayed")
    replay.add_argument("--delete", action="store_true", help="delete each one once replayed")
    replay.set_defaults(handler=run_replay)


async def _get(js: Any, stream: str, seq: int) -> DeadLetter | None:
    try:
        msg = await js.get_msg(stream, seq)
    except Exception as exc:  # deleted sequence (or purged meanwhile)
        if "not found" in str(exc).lower() or getattr(exc, "code", None) == 404:
            return None
        raise
    return DeadLetter(
        seq=seq,
        subject=msg.subject or "",
        time=getattr(msg, "time", None),
        headers=dict(msg.headers or {}),
        data=msg.data or b"",
    )


async def scan(
    js: Any, ns: Namespace, consumer: str | None, limit: int, newest_first: bool = True
) -> list[DeadLetter]:
    """Up to ``limit`` dead letters of ``consumer`` (or all), without consuming them."""
    stream = ns.stream(DP_DLQ)
    state = (await js.stream_info(stream)).state
    if not state.messages:
        return []
    seqs = range(state.first_seq, state.last_seq + 1)
    if newest_first:
        seqs = seqs[::-1]
    wanted = ns.dlq_subject(consumer) if consumer else None
    found: list[DeadLetter] = []
    for seq in seqs[:MAX_SCAN]:
        letter = await _get(js, stream, seq)
        if letter is None or (wanted and letter.subject != wanted):
            continue
        found.append(letter)
        if len(found) >= limit:
            break
    return found


def relative(ns: Namespace, subject: str) -> str | None:
    """``subject`` without the namespace prefix; None when it is not in the namespace."""
    if not ns.prefix:
        return subject
    return subject[len(ns.prefix) + 1 :] if subject.startswith(ns.prefix + ".") else None


def check_replay(ns: Namespace, letter: DeadLetter) -> tuple[str, str] | str:
    """(subject, stream) to republish ``letter`` to, or the reason it is not safe to."""
    original = letter.original_subject
    if not original:
        return f"no {DLQ_SUBJECT} header: not a Tributary dead letter"
    rel = relative(ns, original)
    if rel is None:
        return f"original subject {original!r} is outside this namespace ({ns.prefix!r})"
    try:
        if rel.startswith("dp.raw.") and is_partition_subject(rel):
            bundle = PointBundle.model_validate_json(letter.data)
            expected, stream = ns.raw_partition_subject(bundle.domain, bundle.partition), DP_RAW
        elif rel.startswith("dp.raw."):
            raw = PointBatch.model_validate_json(letter.data)
            expected, stream = ns.raw_subject(raw.domain, raw.source_id), DP_RAW
        elif rel.startswith("dp.classified.") and is_partition_subject(rel):
            classified = ClassifiedBundle.model_validate_json(letter.data)
            expected = ns.classified_partition_subject(
                classified.domain, classified.cls, classified.partition
            )
            stream = DP_CLASSIFIED
        elif rel.startswith("dp.classified."):
            batch = ClassifiedBatch.model_validate_json(letter.data)
            expected = ns.classified_subject(batch.domain, batch.cls, batch.source_id)
            stream = DP_CLASSIFIED
        elif rel.startswith("dp.alert."):
            event = AlertEvent.model_validate_json(letter.data)
            expected = ns.alert_subject(event.domain, event.severity, event.source_id)
            stream = DP_EVENTS
        else:
            return f"original subject {original!r} is not a data subject (dp.raw/classified/alert)"
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"]) or "body"
        return f"payload is not a valid message for {rel}: {where}: {first['msg']}"
    if expected != original:
        return f"payload belongs on {expected!r}, not on the recorded subject {original!r}"
    return original, ns.stream(stream)


def replay_msg_id(letter: DeadLetter) -> str:
    """New and deterministic: a replay retried at once is deduplicated, a later one is not
    needed twice because every consumer downstream is idempotent."""
    digest = hashlib.sha256(
        f"{letter.seq}\x1f{letter.headers.get(MSG_ID_HEADER, '')}".encode() + letter.data
    )
    return "replay-" + digest.hexdigest()[:40]


def describe(ns: Namespace, letter: DeadLetter) -> dict[str, Any]:
    return {
        "seq": letter.seq,
        "time": letter.time.isoformat() if letter.time else None,
        "consumer": letter.consumer,
        "kind": letter.headers.get(DLQ_KIND, ""),
        "deliveries": letter.headers.get(DLQ_DELIVERIES, ""),
        "subject": relative(ns, letter.original_subject) or letter.original_subject,
        "bytes": len(letter.data),
        "reason": letter.headers.get(DLQ_REASON, ""),
    }


async def run_list(
    args: argparse.Namespace, settings: Any, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    from tributary_runtime.bus import connect_nats

    nc = await connect_nats(settings, "tributary-dlq", reconnect_attempts=2)
    try:
        ns = settings.namespace
        letters = await scan(nc.jetstream(), ns, args.consumer, max(args.limit, 1))
    finally:
        await nc.close()
    for letter in letters:
        d = describe(ns, letter)
        if args.json:
            out.write(json.dumps(d) + "\n")
        else:
            out.write(
                f"{d['seq']:>8}  {d['time'] or '-':<32}  {d['consumer']:<22} {d['kind']:<16} "
                f"x{d['deliveries']:<3} {d['subject']}  ({d['bytes']} B)  {d['reason']}\n"
            )
    print(f"{len(letters)} dead letters shown", file=err)
    return 0


async def run_replay(
    args: argparse.Namespace, settings: Any, out: TextIO = sys.stdout, err: TextIO = sys.stderr
) -> int:
    from tributary_runtime.bus import connect_nats

    if bool(args.seqs) == bool(args.all):
        print("tributary dlq replay: give sequence numbers or --all (not both)", file=err)
        return 2
    nc = await connect_nats(settings, "tributary-dlq", reconnect_attempts=2)
    refused = 0
    try:
        js = nc.jetstream()
        ns = settings.namespace
        dlq_stream = ns.stream(DP_DLQ)
        if args.all:
            letters = await scan(js, ns, args.consumer, max(args.limit, 1), newest_first=False)
        else:
            letters = []
            for seq in args.seqs:
                letter = await _get(js, dlq_stream, seq)
                if letter is None:
                    out.write(f"{seq}: not replayed: no such dead letter\n")
                    refused += 1
                else:
                    letters.append(letter)
        for letter in letters:
            target = check_replay(ns, letter)
            if isinstance(target, str):
                out.write(f"{letter.seq}: not replayed: {target}\n")
                refused += 1
                continue
            subject, stream = target
            if args.dry_run:
                out.write(f"{letter.seq}: would replay to {subject}\n")
                continue
            headers = {
                MSG_ID_HEADER: replay_msg_id(letter),
                REPLAYED_FROM: f"{dlq_stream}:{letter.seq}",
            }
            ack = await js.publish(subject, letter.data, stream=stream, headers=headers)
            line = f"{letter.seq}: replayed to {subject} as {stream} seq {ack.seq}"
            if ack.duplicate:
                line += " (duplicate of an earlier replay: not stored again)"
            if args.delete:
                await js.delete_msg(dlq_stream, letter.seq)
                line += "; deleted from the DLQ"
            out.write(line + "\n")
    finally:
        await nc.close()
    return 1 if refused else 0
