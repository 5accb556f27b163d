"""The ``predictions`` table and ``prediction_watermarks`` (schema: writer-postgres migration
0005), and publishing stored predictions on ``dp.prediction.>`` as an outbox.

A run inserts its rows and advances the watermarks in one transaction (``ON CONFLICT DO
NOTHING`` on (stream, model, as_of): a repeated run inserts nothing). Then every row not yet
published (this run's, and any an earlier run could not publish) goes out as
``PredictionBatch`` messages with a deterministic ``Nats-Msg-Id``; ``published_at`` is set only
for batches JetStream acknowledged.
"""

from __future__ import annotations

import json
from collections import defaultdict
from datetime import datetime
from typing import Any

import asyncpg
from nats.js import JetStreamContext

from ml_batch.predict import PredictionRow
from tributary_contracts import (
    DP_EVENTS,
    MSG_ID_HEADER,
    Namespace,
    Prediction,
    PredictionBatch,
    prediction_msg_id,
)
from tributary_runtime.publish import Outgoing, publish_all

MAX_PREDICTIONS_PER_MESSAGE = 500
REQUIRED_VERSION = 5


class SchemaMissing(RuntimeError):
    """The predictions schema (writer-postgres migration 0005) is not in the database yet."""


async def check_schema(conn: asyncpg.Connection) -> None:
    found = await conn.fetchval(
        "SELECT to_regclass('schema_migrations') IS NOT NULL"
        " AND to_regclass('prediction_watermarks') IS NOT NULL"
    )
    if not found:
        raise SchemaMissing(
            "the predictions schema is missing: writer-postgres applies its migrations "
            f"(0001…{REQUIRED_VERSION:04d}) at start — start writer-postgres against this database"
        )


COLUMNS = (
    "time", "domain", "source_id", "stream_id", "model", "predicted_value", "lower_bound",
    "upper_bound", "anomaly_score", "computed_at", "metadata", "as_of", "stream_type",
    "points_used", "step_seconds", "horizon_seconds", "forecast_values", "is_anomaly",
    "threshold_events", "explanation",
)


def _record(row: PredictionRow) -> tuple[Any, ...]:
    return (
        row.time, row.domain, row.source_id, row.stream_id, row.model,
        row.forecast_values[-1] if row.forecast_values else None, row.lower_bound,
        row.upper_bound, row.anomaly_score, row.computed_at, json.dumps(row.details), row.as_of,
        row.stream_type, row.points_used, row.step_seconds, row.horizon_seconds,
        row.forecast_values, row.is_anomaly, json.dumps(row.threshold_events),
        None if row.explanation is None else json.dumps(row.explanation),
    )


async def save(
    conn: asyncpg.Connection,
    rows: list[PredictionRow],
    watermarks: list[tuple[str, str, str, datetime]],
) -> int:
    """Insert ``rows`` (skipping any already there) and advance ``watermarks``, in one
    transaction; returns how many rows were new."""
    cols = ", ".join(COLUMNS)
    async with conn.transaction():
        await conn.execute(
            "CREATE TEMP TABLE IF NOT EXISTS ml_new_predictions"
            " (LIKE predictions INCLUDING DEFAULTS) ON COMMIT DELETE ROWS"
        )
        await conn.copy_records_to_table(
            "ml_new_predictions", records=[_record(r) for r in rows], columns=list(COLUMNS)
        )
        status = await conn.execute(
            f"INSERT INTO predictions ({cols}) SELECT {cols} FROM ml_new_predictions"
            " ON CONFLICT ON CONSTRAINT predictions_key DO NOTHING"
        )
        if watermarks:
            d, s, st, t = (list(col) for col in zip(*watermarks, strict=True))
            await conn.execute(
                """
                INSERT INTO prediction_watermarks (domain, source_id, stream_id, last_time)
                SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::timestamptz[])
                ON CONFLICT (domain, source_id, stream_id) DO UPDATE
                SET last_time = greatest(prediction_watermarks.last_time, excluded.last_time),
                    updated_at = now()
                """,
                d, s, st, t,
            )
    return int(status.split()[-1])


UNPUBLISHED = """
SELECT domain, source_id, stream_id, stream_type, model, as_of, computed_at, points_used,
       step_seconds, horizon_seconds, forecast_values, lower_bound, upper_bound,
       anomaly_score, is_anomaly, threshold_events, explanation
FROM predictions
WHERE published_at IS NULL
ORDER BY computed_at, domain, source_id, stream_id
LIMIT $1
"""


def _prediction(r: asyncpg.Record) -> Prediction:
    return Prediction.model_validate({
        "stream_id": r["stream_id"],
        "stream_type": r["stream_type"],
        "model": r["model"],
        "as_of": r["as_of"],
        "points_used": r["points_used"] or 1,
        "step_seconds": r["step_seconds"] or 1.0,
        "horizon_seconds": r["horizon_seconds"] or 0.0,
        "forecast": r["forecast_values"] or [],
        "lower_bound": r["lower_bound"],
        "upper_bound": r["upper_bound"],
        "anomaly_score": r["anomaly_score"] or 0.0,
        "is_anomaly": r["is_anomaly"],
        "threshold_events": json.loads(r["threshold_events"]),
        "explanation": None if r["explanation"] is None else json.loads(r["explanation"]),
    })


async def publish_pending(
    conn: asyncpg.Connection, js: JetStreamContext, ns: Namespace, limit: int = 100_000
) -> int:
    """Publish unpublished predictions grouped by (domain, source); mark the acked ones.
    Returns how many predictions were acked. A failed publish leaves its rows for next run."""
    groups: dict[tuple[str, str, datetime], list[asyncpg.Record]] = defaultdict(list)
    for r in await conn.fetch(UNPUBLISHED, limit):
        groups[(r["domain"], r["source_id"], r["computed_at"])].append(r)
    stream = ns.stream(DP_EVENTS)
    chunks: list[list[asyncpg.Record]] = []
    messages: list[Outgoing] = []
    for (domain, source, computed_at), records in groups.items():
        for start in range(0, len(records), MAX_PREDICTIONS_PER_MESSAGE):
            chunk = records[start : start + MAX_PREDICTIONS_PER_MESSAGE]
            batch = PredictionBatch(
                domain=domain, source_id=source, computed_at=computed_at,
                predictions=[_prediction(r) for r in chunk],
            )
            msg_id = prediction_msg_id(
                domain, source, [(p.stream_id, p.model, p.as_of) for p in batch.predictions]
            )
            messages.append(Outgoing(
                ns.prediction_subject(domain, source), batch.model_dump_json().encode(),
                {MSG_ID_HEADER: msg_id}, stream,
            ))
            chunks.append(chunk)
    published = await publish_all(js, messages, timeout=30.0)
    acked = [
        r for chunk, error in zip(chunks, published.errors, strict=True) if error is None
        for r in chunk
    ]
    if acked:
        await conn.execute(
            """
            UPDATE predictions p SET published_at = now()
            FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::timestamptz[])
                 AS k(domain, source_id, stream_id, model, as_of)
            WHERE p.domain = k.domain AND p.source_id = k.source_id
              AND p.stream_id = k.stream_id AND p.model = k.model AND p.as_of = k.as_of
            """,
            [r["domain"] for r in acked], [r["source_id"] for r in acked],
            [r["stream_id"] for r in acked], [r["model"] for r in acked],
            [r["as_of"] for r in acked],
        )
    if published.first_error is not None:
        raise PublishIncomplete(len(messages), len(acked), published.first_error)
    return len(acked)


class PublishIncomplete(RuntimeError):
    def __init__(self, messages: int, acked_predictions: int, error: BaseException) -> None:
        super().__init__(
            f"some prediction messages were not acked ({acked_predictions} predictions acked "
            f"of {messages} messages): {type(error).__name__}: {error}; retried next run"
        )
