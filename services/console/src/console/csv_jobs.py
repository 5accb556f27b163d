"""CSV import jobs as the console shows them: read from the ``csv-jobs`` bucket csv-importer
keeps them in (one JSON document per job id, updated after every acknowledged chunk).

Only the fields a reader needs are passed on (never the importer's spool path); a job is
visible to a key when its domain and source are in the key's read scope (a job without a
source, i.e. one whose rows name their sources, only to unrestricted keys).
"""

from __future__ import annotations

import asyncio
from typing import Any

import orjson
from nats.js.errors import KeyNotFoundError

from console.scope import ReadScope
from tributary_runtime.kvwatch import kv_keys

SHOWN = (
    "job_id",
    "status",
    "domain",
    "source_id",
    "filename",
    "size_bytes",
    "created_at",
    "started_at",
    "updated_at",
    "finished_at",
    "rows_total",
    "rows_processed",
    "points_published",
    "points_rejected",
    "error_count",
    "percent",
    "rate_points_per_s",
    "eta_s",
    "reason",
    "resumed",
)
FINISHED = ("completed", "failed", "cancelled")


def shown(document: dict[str, Any], with_errors: bool = False) -> dict[str, Any]:
    job = {k: document.get(k) for k in SHOWN}
    if job["percent"] is None and job["status"] == "completed":
        job["percent"] = 100.0
    if with_errors:
        job["errors"] = document.get("errors", [])
    return job


def visible(scope: ReadScope, job: dict[str, Any]) -> bool:
    domain, source = job.get("domain"), job.get("source_id")
    if scope.unrestricted:
        return True
    return isinstance(domain, str) and isinstance(source, str) and scope.allows(domain, source)


async def _read(kv: Any, key: str) -> dict[str, Any] | None:
    try:
        entry = await kv.get(key)
    except KeyNotFoundError:
        return None
    if not entry.value:
        return None
    try:
        document = orjson.loads(entry.value)
    except orjson.JSONDecodeError:
        return None
    return document if isinstance(document, dict) else None


async def list_jobs(kv: Any, scope: ReadScope, limit: int) -> list[dict[str, Any]]:
    """The visible jobs, newest first, at most ``limit`` (without their error lists)."""
    keys = await kv_keys(kv)
    documents = await asyncio.gather(*(_read(kv, k) for k in keys))
    jobs = [shown(d) for d in documents if d is not None]
    jobs = [j for j in jobs if visible(scope, j)]
    jobs.sort(key=lambda j: str(j.get("created_at") or ""), reverse=True)
    return jobs[:limit]


async def get_job(kv: Any, scope: ReadScope, job_id: str) -> dict[str, Any] | None:
    """One visible job with its error list, or None (unknown or outside the scope)."""
    if not (len(job_id) <= 64 and job_id.isascii() and job_id.isalnum()):
        return None
    document = await _read(kv, job_id)
    if document is None:
        return None
    job = shown(document, with_errors=True)
    return job if visible(scope, job) else None
