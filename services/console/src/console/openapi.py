"""The OpenAPI 3.1 document of the query API (served at ``/openapi.json``); a test holds it to
the app's routes."""

from __future__ import annotations

from typing import Any

STREAM_PARAMS = [
    {"name": n, "in": "query", "schema": {"type": "string"}, "description": d}
    for n, d in (
        ("domain", "Domain of the stream."),
        ("source_id", "Source of the stream."),
        ("stream_id", "Stream id."),
    )
]
RANGE_PARAMS = [
    {
        "name": "from",
        "in": "query",
        "schema": {"type": "string", "format": "date-time"},
        "description": "Start (inclusive, ISO 8601); default: one hour before `to`.",
    },
    {
        "name": "to",
        "in": "query",
        "schema": {"type": "string", "format": "date-time"},
        "description": "End (exclusive, ISO 8601); default: now.",
    },
]
PAGE_PARAMS = [
    {
        "name": "limit",
        "in": "query",
        "schema": {"type": "integer", "minimum": 1},
        "description": "Most rows in this page.",
    },
    {
        "name": "cursor",
        "in": "query",
        "schema": {"type": "string"},
        "description": "The `next` of the previous page.",
    },
]
ERRORS = {
    "401": {"description": "Missing, unknown, revoked or expired key."},
    "403": {"description": "The key's scope does not cover this stream/source."},
    "422": {"description": "A parameter is invalid; `field` names it."},
    "503": {"description": "PostgreSQL or NATS did not answer; retry after `Retry-After`."},
}


def _get(summary: str, params: list[dict[str, Any]], ok: str) -> dict[str, Any]:
    return {
        "get": {
            "summary": summary,
            "parameters": params,
            "security": [{"apiKey": []}],
            "responses": {"200": {"description": ok}, **ERRORS},
        }
    }


def document() -> dict[str, Any]:
    cls = {
        "name": "cls",
        "in": "query",
        "schema": {
            "type": "array",
            "items": {
                "type": "string",
                "enum": ["normal", "warning", "critical", "anomaly", "rejected"],
            },
        },
        "style": "form",
        "explode": True,
        "description": "Only these classes (repeatable).",
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "Tributary query API (console)",
            "version": "1",
            "description": "Read-only queries for keys of any role. A source_writer key reads "
            "only the domains and sources it may write to. Times are ISO 8601 UTC.",
        },
        "components": {
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}}
        },
        "paths": {
            "/api/v1/points": _get(
                "Points of one stream over a time range: raw pages, or downsampled with `every` "
                "(seconds) or `buckets` (count) into {time, count, min, max, mean, cls (worst)}.",
                [
                    *STREAM_PARAMS,
                    *RANGE_PARAMS,
                    cls,
                    *PAGE_PARAMS,
                    {
                        "name": "every",
                        "in": "query",
                        "schema": {"type": "number"},
                        "description": "Bucket width in seconds.",
                    },
                    {
                        "name": "buckets",
                        "in": "query",
                        "schema": {"type": "integer"},
                        "description": "Number of buckets the range is cut into.",
                    },
                ],
                "`{points: [...], next}` or `{buckets: [...], every_seconds}`",
            ),
            "/api/v1/streams": _get(
                "Streams with points in the last `hours` (default 24), latest first.",
                [
                    {"name": "hours", "in": "query", "schema": {"type": "integer"}},
                    {"name": "limit", "in": "query", "schema": {"type": "integer"}},
                ],
                "`{streams: [{domain, source_id, stream_id, last_time, last_value, last_cls, "
                "points}]}`",
            ),
            "/api/v1/alerts": _get(
                "Alerts, newest opened first: `status` open (default), closed or all; of one "
                "stream; overlapping a time range.",
                [
                    {
                        "name": "status",
                        "in": "query",
                        "schema": {"type": "string", "enum": ["open", "closed", "all"]},
                    },
                    *STREAM_PARAMS,
                    *RANGE_PARAMS,
                    *PAGE_PARAMS,
                ],
                "`{alerts: [...], next}`",
            ),
            "/api/v1/predictions": _get(
                "ml-batch predictions, newest `as_of` first.",
                [*STREAM_PARAMS, *PAGE_PARAMS],
                "`{predictions: [...], next}`",
            ),
            "/api/v1/rejects": _get(
                "Input the gateways refused, newest first.",
                [
                    STREAM_PARAMS[0],
                    STREAM_PARAMS[1],
                    {"name": "transport", "in": "query", "schema": {"type": "string"}},
                    *PAGE_PARAMS,
                ],
                "`{rejects: [...], next}`",
            ),
            "/api/v1/csv-jobs": _get(
                "CSV import jobs with their progress, newest first.",
                [{"name": "limit", "in": "query", "schema": {"type": "integer"}}],
                "`{jobs: [...]}`",
            ),
            "/api/v1/csv-jobs/{job_id}": _get(
                "One CSV import job with its errors.",
                [{"name": "job_id", "in": "path", "required": True, "schema": {"type": "string"}}],
                "the job",
            ),
            "/api/v1/configs": _get(
                "Stored stream configs that apply to what the key reads.",
                [STREAM_PARAMS[0]],
                "`{configs: [{domain, source_id, stream_id, version, config, summary}]}`",
            ),
            "/api/v1/fleet": _get(
                "Services (up, ready, rates, breakers), consumer lag, streams, DLQ depth.",
                [],
                "fleet status",
            ),
            "/sensors/{sensor_id}/status": _get(
                "Legacy IoT: latest stored reading of a sensor, its class and the open alert.",
                [
                    {
                        "name": "sensor_id",
                        "in": "path",
                        "required": True,
                        "schema": {"type": "integer", "minimum": 0},
                    }
                ],
                "the legacy status reply",
            ),
        },
    }
