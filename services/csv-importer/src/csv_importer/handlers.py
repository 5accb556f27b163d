"""The job API's handlers: ``async def handler(ctx, request) -> Answer`` module functions over
the importer's context (``CsvContext``: the gateway base's context, the job store, the runner,
the spool directory); ``app`` wraps them with ``tributary_ingest.http.endpoint``.

Access as on gateway-http (the base's checks): each request spends a token of the client IP's
budget (429), shows its key (401), and its role/scope is checked (403): uploads and cancels need
a key that may write to the job's domain and source (a file with a source_id column needs one
that may write to any source), job listings any valid key. Refusals are audited. A job bucket
that does not answer is a 503 (stage ``jobs``).
"""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from pathlib import Path

import structlog
from starlette.requests import Request

from csv_importer.jobs import Job, JobStatus, JobStore, now
from csv_importer.metrics import UPLOADS
from csv_importer.reading import OptionsProblem, detect_options
from csv_importer.runner import JobRunner
from csv_importer.settings import CsvImporterSettings
from csv_importer.upload import UploadProblem, receive_upload, remove_spool_file
from tributary_access.access import target_of
from tributary_access.apikeys import Action, Role, check_access
from tributary_access.guard import client_ip
from tributary_ingest.gateway import GatewayContext
from tributary_ingest.http import Answer, authenticate, check
from tributary_ingest.points import check_domain, check_identifier, missing
from tributary_runtime.ops import Reply

JOB_ID_CHARS = frozenset("0123456789abcdef")
JOBS_UNAVAILABLE = "the message bus did not answer; retry later"

log = structlog.get_logger("csv_importer")


@dataclass(frozen=True)
class CsvContext:
    """What the handlers use; the lifespan opens it."""

    gateway: GatewayContext[CsvImporterSettings]
    jobs: JobStore
    runner: JobRunner
    spool_dir: Path

    @property
    def settings(self) -> CsvImporterSettings:
        return self.gateway.settings


def check_fields(fields: dict[str, str]) -> tuple[str, str | None]:
    """The form's ``domain`` and optional ``source_id``, or 422 naming the field."""
    domain = fields.get("domain", "").strip()
    if not domain:
        raise Reply(422, {"error": missing("domain"), "field": "domain"})
    if problem := check_domain(domain):
        raise Reply(422, {"error": problem, "field": "domain"})
    source_id = fields.get("source_id", "").strip() or None
    if source_id is not None and (problem := check_identifier(source_id, "source_id")):
        raise Reply(422, {"error": problem, "field": "source_id"})
    return domain, source_id


async def upload(ctx: CsvContext, request: Request) -> Answer:
    """POST /ingest/csv: the file to the spool, the job to the bucket; 202 with its id."""
    gateway, settings = ctx.gateway, ctx.settings
    granted = await authenticate(gateway, request, "uploads")
    if granted.record.role is Role.READ_ONLY:  # refused before the file is received
        check(gateway, request, granted, Action.WRITE_POINTS)
    job_id = uuid.uuid4().hex
    path = ctx.spool_dir / f"{job_id}.csv"
    try:
        received = await receive_upload(
            request.headers.get("content-type"),
            request.stream(),
            path,
            settings.max_upload_bytes,
            settings.upload_idle_timeout_seconds,
        )
    except UploadProblem as exc:
        body = {"error": exc.message} | ({"field": exc.field} if exc.field else {})
        raise Reply(exc.status, body) from None
    try:
        domain, source_id = check_fields(received.fields)
        check(gateway, request, granted, Action.WRITE_POINTS, domain, source_id)
        options = detect_options(received.fields, received.head, received.utf8_valid)
        if options.has_source_column and check_access(
            granted.record, Action.WRITE_POINTS, domain, None
        ):  # its rows name their own sources, so the key must be allowed any source
            gateway.guard.deny(
                granted,
                "the file has a source_id column, so its rows may name any source: it needs "
                f"a key allowed every source (this key's scope: {granted.record.scope_text()})",
                client_ip(request.scope),
                target_of(request.scope),
            )
    except OptionsProblem as exc:
        remove_spool_file(path)
        raise Reply(422, {"error": exc.message, "field": exc.field}) from None
    except Reply:
        remove_spool_file(path)
        raise
    created = now()
    lines = received.line_count()
    job = Job(
        job_id=job_id,
        domain=domain,
        source_id=source_id,
        filename=received.filename[:256],
        size_bytes=received.size,
        options=options,
        chunk_rows=settings.chunk_rows,
        slice_rows=settings.slice_rows,
        spool_file=str(path),
        created_at=created,
        updated_at=created,
        rows_total=max(lines - (1 if options.header else 0), 0),
    )
    try:
        await ctx.jobs.put(job)
    except Exception as exc:
        remove_spool_file(path)
        raise gateway.fault("jobs", exc, JOBS_UNAVAILABLE) from None
    ctx.runner.start(job)
    log.info("job_created", job_id=job_id, domain=domain, source_id=source_id, bytes=received.size)
    return Answer(
        202,
        {
            "job_id": job_id,
            "status": job.status.value,
            "rows_total": job.rows_total,
            "format": options.format.value,
            "value_columns": options.value_columns,
        },
        {"Location": f"/ingest/csv/jobs/{job_id}"},
    )


def count_upload(_: Request, answer: Answer) -> None:
    """``csv_importer_uploads{status}``: every answer of ``upload``."""
    UPLOADS.labels(str(answer.status)).inc()


async def get_job(ctx: CsvContext, job_id: str) -> Job:
    """The job, or 404; the bucket not answering → 503."""
    if len(job_id) != 32 or not JOB_ID_CHARS.issuperset(job_id):
        raise Reply(404, {"error": f"no job {job_id[:64]!r}"})
    try:
        job = await ctx.jobs.get(job_id)
    except Exception as exc:
        raise ctx.gateway.fault("jobs", exc, JOBS_UNAVAILABLE) from None
    if job is None:
        raise Reply(404, {"error": f"no job {job_id!r}"})
    return job


async def show_job(ctx: CsvContext, request: Request) -> Answer:
    """GET /ingest/csv/jobs/{job_id}: the job with its errors."""
    await authenticate(ctx.gateway, request)
    job = await get_job(ctx, request.path_params["job_id"])
    return Answer(200, job.public())


async def list_jobs(ctx: CsvContext, request: Request) -> Answer:
    """GET /ingest/csv/jobs[?limit=&status=]: newest first, without their error lists."""
    await authenticate(ctx.gateway, request)
    try:
        limit = int(request.query_params.get("limit", ctx.settings.jobs_listed))
    except ValueError:
        raise Reply(422, {"error": "limit must be an integer", "field": "limit"}) from None
    limit = max(1, min(limit, 1000))
    status = request.query_params.get("status")
    try:
        jobs = await ctx.jobs.all()
    except Exception as exc:
        raise ctx.gateway.fault("jobs", exc, JOBS_UNAVAILABLE) from None
    if status:
        jobs = [j for j in jobs if j.status.value == status]
    jobs.sort(key=lambda j: j.created_at, reverse=True)
    # Without the error lists, so the listing stays small; GET one job for its errors.
    listed = [{k: v for k, v in j.public().items() if k != "errors"} for j in jobs[:limit]]
    return Answer(200, {"jobs": listed, "total": len(jobs)})


async def cancel_job(ctx: CsvContext, request: Request) -> Answer:
    """DELETE /ingest/csv/jobs/{job_id}: cancel a job that has not finished (409 if it has)."""
    granted = await authenticate(ctx.gateway, request)
    job = await get_job(ctx, request.path_params["job_id"])
    check(ctx.gateway, request, granted, Action.WRITE_POINTS, job.domain, job.source_id)
    if job.status.finished:
        return Answer(409, {"error": f"job is already {job.status.value}"} | {"job": job.public()})
    if not await ctx.runner.cancel(job.job_id):
        # Not running in this process (e.g. another replica's, or waiting): mark it here.
        job.status, job.reason, job.finished_at = JobStatus.CANCELLED, "cancelled by DELETE", now()
        try:
            await ctx.jobs.put(job)
        except Exception as exc:
            raise ctx.gateway.fault("jobs", exc, JOBS_UNAVAILABLE) from None
        remove_spool_file(job.spool_file)
    job = await get_job(ctx, job.job_id)
    return Answer(200, job.public())
