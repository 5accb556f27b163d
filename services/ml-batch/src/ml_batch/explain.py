"""Explanations of anomalies: built-in plain language, or the AI explainer over HTTP.

The explainer (seed ``ai_explainer_runner``) is optional and never blocks predictions: it is
called after the run's predictions are stored and published, each request has a timeout, the
whole pass has a budget, and an anomaly whose request failed keeps ``explanation`` NULL and is
retried next run, up to ``ML_EXPLAIN_MAX_ATTEMPTS``; then the built-in explanation is written
with the explainer's last error.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import structlog

from ml_batch import metrics

log = structlog.get_logger(__name__)
EXPLAIN_PATH = "/explain/anomaly"


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def builtin_explanation(details: dict[str, Any]) -> dict[str, Any]:
    """A plain-language explanation from the numbers the score was computed from: which rule,
    how far from the baseline, the trend."""
    observed, baseline = details["observed"], details["baseline"]
    sigma, score = details["sigma"], details["anomaly_score"]
    direction = "above" if observed >= baseline else "below"
    slope = details["baseline_slope_per_second"]
    per_hour = slope * 3600.0
    trend = (
        "flat" if abs(per_hour) < 1e-12 else f"{'rising' if per_hour > 0 else 'falling'} "
        f"{_fmt(abs(per_hour))} per hour"
    )
    text = (
        f"Value {_fmt(observed)} at {details['observed_at']} is {_fmt(abs(observed - baseline))} "
        f"{direction} the expected {_fmt(baseline)}, {_fmt(score)} robust standard deviations "
        f"(sigma {_fmt(sigma)} = 1.4826 × MAD of the baseline residuals); rule: robust z-score "
        f"≥ {_fmt(details['threshold'])} over the latest {details['score_points']} points "
        f"against a line fitted to the {details['baseline_points']} points before them; "
        f"baseline trend {trend}."
    )
    return {
        "source": "builtin",
        "rule": "robust_zscore",
        "text": text,
        "direction": direction,
        "distance": observed - baseline,
        "distance_sigmas": score,
        "trend_per_hour": per_hour,
    }


@dataclass(frozen=True)
class Pending:
    domain: str
    source_id: str
    stream_id: str
    model: str
    as_of: datetime
    attempts: int
    payload: dict[str, Any]
    details: dict[str, Any]


PENDING_QUERY = """
SELECT domain, source_id, stream_id, model, as_of, stream_type, anomaly_score,
       forecast_values, threshold_events, metadata, explain_attempts
FROM predictions
WHERE is_anomaly AND explanation IS NULL AND anomaly_score >= $1 AND explain_attempts < $2
ORDER BY anomaly_score DESC
LIMIT $3
"""


async def pending_explanations(
    conn: asyncpg.Connection, min_score: float, max_attempts: int, limit: int
) -> list[Pending]:
    found = []
    for r in await conn.fetch(PENDING_QUERY, min_score, max_attempts, limit):
        details = json.loads(r["metadata"])
        payload = {
            "domain": r["domain"],
            "source_id": r["source_id"],
            "stream_id": r["stream_id"],
            "stream_type": r["stream_type"],
            "model": r["model"],
            "as_of": r["as_of"].isoformat(),
            "anomaly_score": r["anomaly_score"],
            "forecast": list(r["forecast_values"] or []),
            "threshold_events": json.loads(r["threshold_events"]),
            "context": details,
            "builtin_explanation": builtin_explanation(details)["text"],
        }
        found.append(
            Pending(r["domain"], r["source_id"], r["stream_id"], r["model"], r["as_of"],
                    r["explain_attempts"], payload, details)
        )
    return found


async def _ask(client: httpx.AsyncClient, url: str, item: Pending) -> dict[str, Any]:
    reply = await client.post(url, json=item.payload)
    if reply.status_code >= 300:
        raise RuntimeError(f"HTTP {reply.status_code}: {reply.text[:200]}")
    body = reply.json()
    if not isinstance(body, dict):
        raise RuntimeError("reply is not a JSON object")
    text = body.get("explanation") or body.get("text") or body.get("summary")
    return {"source": "ai-explainer", "text": text if isinstance(text, str) else None,
            "reply": body}


KEY_WHERE = "domain = $1 AND source_id = $2 AND stream_id = $3 AND model = $4 AND as_of = $5"


async def explain_pending(
    pool: asyncpg.Pool,
    base_url: str,
    *,
    min_score: float,
    max_attempts: int,
    batch: int,
    concurrency: int,
    timeout: float,
    budget: float,
) -> dict[str, int]:
    """One explainer pass: POST the pending anomalies, store what came back. Returns counts
    {explained, failed, gave_up, unfinished}."""
    async with pool.acquire() as conn:
        items = await pending_explanations(conn, min_score, max_attempts, batch)
    counts = {"explained": 0, "failed": 0, "gave_up": 0, "unfinished": 0}
    if not items:
        return counts
    url = base_url + EXPLAIN_PATH
    gate = asyncio.Semaphore(concurrency)

    async def one(client: httpx.AsyncClient, item: Pending) -> None:
        async with gate:
            try:
                explanation = await _ask(client, url, item)
            except (httpx.HTTPError, RuntimeError, ValueError) as exc:
                error = f"{type(exc).__name__}: {exc}"[:300]
                await _failed(pool, item, error, max_attempts, counts)
                return
        async with pool.acquire() as conn:
            await conn.execute(
                f"UPDATE predictions SET explanation = $6, explain_attempts = explain_attempts + 1"
                f" WHERE {KEY_WHERE}",
                item.domain, item.source_id, item.stream_id, item.model, item.as_of,
                json.dumps(explanation),
            )
        counts["explained"] += 1
        metrics.EXPLANATIONS.labels("explained").inc()

    async with httpx.AsyncClient(timeout=timeout) as client:
        tasks = [asyncio.create_task(one(client, item)) for item in items]
        _, late = await asyncio.wait(tasks, timeout=budget)
        for task in late:  # over budget: not an attempt, retried next run
            task.cancel()
        await asyncio.gather(*late, return_exceptions=True)
    counts["unfinished"] = len(late)
    if counts["failed"] or late:
        log.warning("explainer pass incomplete; will retry next run", url=url, **counts)
    return counts


async def _failed(
    pool: asyncpg.Pool, item: Pending, error: str, max_attempts: int, counts: dict[str, int]
) -> None:
    attempts = item.attempts + 1
    explanation = None
    if attempts >= max_attempts:
        explanation = {**builtin_explanation(item.details), "explainer_error": error}
        counts["gave_up"] += 1
        metrics.EXPLANATIONS.labels("gave_up").inc()
    else:
        counts["failed"] += 1
        metrics.EXPLANATIONS.labels("failed").inc()
    async with pool.acquire() as conn:
        await conn.execute(
            f"UPDATE predictions SET explain_attempts = $6, explanation = $7 WHERE {KEY_WHERE}",
            item.domain, item.source_id, item.stream_id, item.model, item.as_of,
            attempts, None if explanation is None else json.dumps(explanation),
        )
