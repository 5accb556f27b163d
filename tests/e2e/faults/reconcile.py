"""Wait for the pipeline to drain (bounded), then compare PostgreSQL and the DLQ with the ledger.

The rules (``Reconciliation.problems`` lists every violation):
- every acknowledged point is stored exactly once with its value, or — only when a scenario
  sends poison — is in ``DP_DLQ`` with a reason (and then not stored);
- every refused point has a reason and is not stored;
- nothing else is stored (no row the producers did not send, no refused point);
- duplicates = 0 (a key stored twice; also nothing stored twice across table and DLQ).
"""

from __future__ import annotations

import asyncio
import math
import os
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import nats

from tests.e2e.faults.load import Key, Ledger
from tributary_contracts import (
    CLASSIFIER_DURABLE,
    DEFAULT_PARTITIONS,
    DP_CLASSIFIED,
    DP_DLQ,
    DP_RAW,
    WRITER_POSTGRES_DURABLE,
    ClassifiedBatch,
    ClassifiedBundle,
    Namespace,
    classifier_partition_durable,
    is_partition_subject,
)
from tributary_contracts.dead_letters import DLQ_KIND, DLQ_REASON, DLQ_SUBJECT


async def stored_rows(dsn: str, sources: list[str]) -> list[tuple[Key, float]]:
    """Rows of ``sources`` (a scenario's producers) in ``data_points``."""
    try:
        conn = await asyncpg.connect(dsn, timeout=5)
    except (OSError, asyncpg.PostgresError, TimeoutError):
        return []
    try:
        rows = await conn.fetch(
            "SELECT source_id, stream_id, extract(epoch FROM time)::bigint AS ts, value "
            "FROM data_points WHERE source_id = ANY($1::text[])",
            sources,
        )
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()
    return [((r["source_id"], r["stream_id"], int(r["ts"])), float(r["value"])) for r in rows]


@dataclass
class DeadLetter:
    key: Key
    kind: str
    reason: str


async def dead_letters(nats_url: str, prefix: str, sources: list[str]) -> list[DeadLetter]:
    """Every point of ``sources`` in this namespace's DP_DLQ (bodies are bundles or batches),
    with the dead letter's kind and reason; an unreadable body counts as an unknown point."""
    nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=3)
    try:
        js = nc.jetstream()
        stream = Namespace(prefix).stream(DP_DLQ)
        info = await js.stream_info(stream)
        out: list[DeadLetter] = []
        for seq in range(info.state.first_seq, info.state.last_seq + 1):
            if info.state.messages == 0:
                break
            try:
                msg = await js.get_msg(stream, seq)
            except Exception:  # deleted sequence
                continue
            headers = msg.headers or {}
            kind, reason = headers.get(DLQ_KIND, ""), headers.get(DLQ_REASON, "")
            try:  # a writer's refused rows: a bundle of one batch, or a former batch
                if is_partition_subject(headers.get(DLQ_SUBJECT, "")):
                    batches = ClassifiedBundle.model_validate_json(msg.data or b"").batches
                else:
                    batches = [ClassifiedBatch.model_validate_json(msg.data or b"")]
            except ValueError:
                out.append(DeadLetter(("?", "?", 0), kind, reason))
                continue
            for batch in batches:
                if batch.source_id not in sources:
                    continue
                for p in batch.points:
                    out.append(DeadLetter((batch.source_id, p.stream_id, int(p.ts.timestamp())),
                                          kind, reason))  # fmt: skip
        return out
    finally:
        await nc.close()


async def consumer_lag(nats_url: str, prefix: str) -> dict[str, int]:
    """Pending + unacknowledged messages of the classifier (its partition consumers, summed) and
    writer-postgres consumers."""
    ns = Namespace(prefix)
    nc = await nats.connect(nats_url, connect_timeout=5, max_reconnect_attempts=3)
    try:
        js = nc.jetstream()
        lag = {CLASSIFIER_DURABLE: 0}
        partitions = int(os.environ.get("BUS_PARTITIONS", DEFAULT_PARTITIONS))
        for p in range(partitions):
            info = await js.consumer_info(ns.stream(DP_RAW), classifier_partition_durable(p))
            lag[CLASSIFIER_DURABLE] += int(info.num_pending) + int(info.num_ack_pending)
        info = await js.consumer_info(ns.stream(DP_CLASSIFIED), WRITER_POSTGRES_DURABLE)
        lag[WRITER_POSTGRES_DURABLE] = int(info.num_pending) + int(info.num_ack_pending)
        return lag
    finally:
        await nc.close()


@dataclass
class Reconciliation:
    counts: dict[str, Any] = field(default_factory=dict)
    problems: list[str] = field(default_factory=list)
    dead_letters: list[DeadLetter] = field(default_factory=list)

    def summary(self) -> str:
        return " ".join(f"{k}={v}" for k, v in self.counts.items())


def reconcile(
    ledger: Ledger, rows: list[tuple[Key, float]], dlq: list[DeadLetter], allow_dlq: bool
) -> Reconciliation:
    result = Reconciliation(dead_letters=dlq)
    stored = Counter(key for key, _ in rows)
    values = dict(rows)
    dead = Counter(d.key for d in dlq)
    duplicates = sum(c - 1 for c in stored.values() if c > 1) + sum(
        c - 1 for c in dead.values() if c > 1
    )
    problems = result.problems
    if duplicates:
        problems.append(f"{duplicates} duplicates: {[k for k, c in stored.items() if c > 1][:5]}")
    both = set(stored) & set(dead)
    if both:
        problems.append(f"{len(both)} points both stored and dead-lettered: {sorted(both)[:5]}")
    for d in dlq:
        if not d.reason:
            problems.append(f"dead letter without a reason: {d}")
    if dlq and not allow_dlq:
        problems.append(f"{len(dlq)} unexpected dead letters, e.g. {dlq[:3]}")
    missing = sorted(k for k in ledger.acked if k not in stored and k not in dead)
    if missing:
        problems.append(f"{len(missing)} acknowledged points lost, e.g. {missing[:5]}")
    wrong = sorted(
        k for k in ledger.acked & set(values)
        if not math.isclose(values[k], ledger.sent[k])
    )  # fmt: skip
    if wrong:
        problems.append(f"{len(wrong)} stored with another value, e.g. {wrong[:5]}")
    refused_stored = sorted(k for k in ledger.refused if k in stored)
    if refused_stored:
        problems.append(f"{len(refused_stored)} refused points stored: {refused_stored[:5]}")
    unexpected = sorted(k for k in stored if k not in ledger.sent)
    if unexpected:
        problems.append(f"{len(unexpected)} rows nobody sent: {unexpected[:5]}")
    unresolved = ledger.unresolved
    unresolved_stored = sum(1 for k in unresolved if k in stored)
    result.counts = {
        "sent": len(ledger.sent),
        "acked": len(ledger.acked),
        "refused": len(ledger.refused),
        "unresolved": len(unresolved),
        "stored": len(stored),
        "dead_lettered": len(dead),
        "duplicates": duplicates,
        "unresolved_stored": unresolved_stored,
    }
    return result


async def drain_and_reconcile(
    ledger: Ledger, sources: list[str], dsn: str, nats_url: str, prefix: str, *,
    allow_dlq: bool = False, timeout: float = 60.0,
) -> Reconciliation:
    """Poll until every acknowledged point is stored or dead-lettered and both consumers are
    idle (bounded by ``timeout``), then reconcile once more after a short settle."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        rows = await stored_rows(dsn, sources)
        stored = {k for k, _ in rows}
        dlq = await dead_letters(nats_url, prefix, sources) if allow_dlq else []
        done = {d.key for d in dlq} | stored
        if ledger.acked <= done:
            try:
                lag = await consumer_lag(nats_url, prefix)
            except Exception:
                lag = {"unknown": 1}
            if not any(lag.values()):
                break
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)  # anything still travelling (a duplicate) would land now
    rows = await stored_rows(dsn, sources)
    dlq = await dead_letters(nats_url, prefix, sources)
    return reconcile(ledger, rows, dlq, allow_dlq)
