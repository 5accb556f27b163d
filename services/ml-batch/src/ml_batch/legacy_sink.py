"""Predictions of the domains ``SINK_ROUTES`` gives to SQL Server, in the legacy
``dbo.predictions`` table the legacy backend reads (``tributary_sqlserver.predictions``).

PostgreSQL's ``predictions`` stays ml-batch's record and outbox; every run then copies the rows
of those domains computed within ``ML_RECENT_SECONDS`` to SQL Server, skipping the ones already
there and adding explanations that arrived since (the AI explainer answers after the insert, as
``ai_explainer_runner`` updated rows). A run whose copy fails is logged and counted; the next
run copies the same window again, so nothing is lost while SQL Server is away for less than it.
Only legacy sensors (integer stream ids) have a row there.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import asyncpg

from tributary_sqlserver.predictions import LegacyPrediction

RECENT_SQL = """
SELECT stream_id, model, predicted_value, lower_bound, upper_bound, anomaly_score, is_anomaly,
       time, as_of, computed_at, explanation
  FROM predictions
 WHERE domain = ANY($1::text[]) AND computed_at >= $2
 ORDER BY computed_at, stream_id, model
"""


def _explanation(raw: Any) -> dict[str, Any] | None:
    if raw is None:
        return None
    return dict(json.loads(raw)) if isinstance(raw, str) else dict(raw)


async def recent_legacy_predictions(
    conn: asyncpg.Connection, domains: list[str], since: datetime
) -> list[LegacyPrediction]:
    """The window's predictions of ``domains`` for sensors with an integer id."""
    out = []
    for r in await conn.fetch(RECENT_SQL, domains, since):
        if not r["stream_id"].isdigit():
            continue
        out.append(
            LegacyPrediction(
                sensor_id=int(r["stream_id"]),
                model=r["model"],
                predicted_value=r["predicted_value"],
                lower_bound=r["lower_bound"],
                upper_bound=r["upper_bound"],
                anomaly_score=r["anomaly_score"],
                is_anomaly=bool(r["is_anomaly"]),
                target=r["time"],
                as_of=r["as_of"],
                computed_at=r["computed_at"],
                explanation=_explanation(r["explanation"]),
            )
        )
    return out
