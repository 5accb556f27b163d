"""The legacy ``dbo.predictions`` table the legacy backend reads (seed 002: ``iot_monitor_backend``
consumes ``predictions`` through the database; ``ai_explainer_runner`` filled its
``explanation``), written by ml-batch for the domains ``SINK_ROUTES`` gives to SQL Server.

One row per (sensor, model, as_of): re-writing a prediction inserts nothing, and an explanation
is only written where the row has none yet (the runner's ``UPDATE … WHERE explanation IS NULL``).
Layout: ``deploy/sqlserver/004_predictions.sql``; ``metadata`` creates it on the stand-in.
Blocking (SQLAlchemy Core; run it in a thread); dialect-neutral statements.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    Column,
    DateTime,
    Float,
    Identity,
    Integer,
    MetaData,
    Table,
    Unicode,
    UnicodeText,
    UniqueConstraint,
    and_,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import mssql
from sqlalchemy.engine import Engine

UtcDateTime = DateTime().with_variant(mssql.DATETIME2(), "mssql")  # type: ignore[no-untyped-call]
metadata = MetaData(schema="dbo")
predictions = Table(
    "predictions",
    metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("sensor_id", Integer, nullable=False),
    Column("model_id", Unicode(50), nullable=False),
    Column("predicted_value", Float(53), nullable=True),
    Column("lower_bound", Float(53), nullable=True),
    Column("upper_bound", Float(53), nullable=True),
    Column("anomaly_score", Float(53), nullable=True),
    Column("is_anomaly", Boolean, nullable=False),
    Column("target_timestamp", UtcDateTime, nullable=False),
    Column("as_of", UtcDateTime, nullable=False),
    Column("created_at", UtcDateTime, nullable=False),
    Column("explanation", UnicodeText, nullable=True),
    UniqueConstraint("sensor_id", "model_id", "as_of", name="ux_predictions_sensor_model_as_of"),
    implicit_returning=False,
)


@dataclass(frozen=True)
class LegacyPrediction:
    """One prediction of a legacy sensor, as ``dbo.predictions`` holds it."""

    sensor_id: int
    model: str
    predicted_value: float | None
    lower_bound: float | None
    upper_bound: float | None
    anomaly_score: float | None
    is_anomaly: bool
    target: datetime
    as_of: datetime
    computed_at: datetime
    explanation: dict[str, Any] | None


def _naive(ts: datetime) -> datetime:
    return ts.astimezone(UTC).replace(tzinfo=None)


def write_predictions(engine: Engine, rows: list[LegacyPrediction]) -> tuple[int, int]:
    """Insert the rows not there yet and set ``explanation`` where it is still NULL, in one
    transaction; returns ``(inserted, explained)``."""
    if not rows:
        return 0, 0
    keys = [(r.sensor_id, r.model, _naive(r.as_of)) for r in rows]
    c = predictions.c
    with engine.begin() as conn:
        existing: dict[tuple[int, str, datetime], bool] = {}
        for start in range(0, len(keys), 200):
            chunk = keys[start : start + 200]
            found = conn.execute(
                select(c.sensor_id, c.model_id, c.as_of, c.explanation).where(
                    or_(*(and_(c.sensor_id == s, c.model_id == m, c.as_of == a)
                          for s, m, a in chunk))
                )
            )  # fmt: skip
            for sensor_id, model, as_of, explanation in found:
                existing[(sensor_id, model, as_of)] = explanation is not None
        new = [r for r, k in zip(rows, keys, strict=True) if k not in existing]
        if new:
            conn.execute(
                predictions.insert(),
                [
                    {
                        "sensor_id": r.sensor_id, "model_id": r.model,
                        "predicted_value": r.predicted_value, "lower_bound": r.lower_bound,
                        "upper_bound": r.upper_bound, "anomaly_score": r.anomaly_score,
                        "is_anomaly": r.is_anomaly, "target_timestamp": _naive(r.target),
                        "as_of": _naive(r.as_of), "created_at": _naive(r.computed_at),
                        "explanation": None if r.explanation is None
                        else json.dumps(r.explanation),
                    }
                    for r in new
                ],
            )  # fmt: skip
        explained = 0
        for r, k in zip(rows, keys, strict=True):
            if r.explanation is None or existing.get(k, True):
                continue  # nothing to add, just inserted with it, or explained already
            result = conn.execute(
                update(predictions)
                .where(c.sensor_id == k[0], c.model_id == k[1], c.as_of == k[2],
                       c.explanation.is_(None))
                .values(explanation=json.dumps(r.explanation))
            )  # fmt: skip
            explained += result.rowcount or 0
    return len(new), explained
