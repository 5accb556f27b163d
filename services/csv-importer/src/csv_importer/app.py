"""Wiring: Starlette app with the CSV job API, ``/health``, ``/ready``, ``/metrics``.

``POST /ingest/csv`` (multipart, ``X-API-Key`` of an ingest or admin key) streams the file to the
spool directory, creates a job in the ``csv-jobs`` bucket and replies 202 with its id at once;
the job then publishes ``PointBatch``es (``transport=csv``) in ``PointBundle``s on
``dp.raw.<domain>.part.<p>`` and bad cells on ``dp.rejected.csv``.
``GET /ingest/csv/jobs[/{job_id}]`` shows jobs, ``DELETE /ingest/csv/jobs/{job_id}`` cancels one.
At start every unfinished job resumes.

Access as on gateway-http (``tributary_access.access``): each request spends a token of the
client IP's budget (429), shows its key (401), and its role/scope is checked (403): uploads and
cancels need a key that may write to the job's domain and source (a file with a source_id column
needs one that may write to any source), job listings any valid key. Refusals are audited.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path

import structlog
from nats.aio.client import Client
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from csv_importer.jobs import Job, JobStatus, JobStore, now
from csv_importer.metrics import ERRORS, JOBS_RESUMED, UPLOADS
from csv_importer.reading import OptionsProblem, detect_options
from csv_importer.runner import JobRunner
from csv_importer.settings import CsvImporterSettings
from csv_importer.upload import (
    UploadProblem,
    prepare_spool_dir,
    receive_upload,
    remove_spool_file,
)
from tributary_access.access import RequestGuard
from tributary_access.apikeys import Action, Granted, Role, check_access
from tributary_access.audit import AuditLog
from tributary_access.guard import HeaderLimits
from tributary_access.ratelimit import IngestLimiter
from tributary_contracts import (
    CSV_JOBS_BUCKET,
    Transport,
)
from tributary_contracts.models import DOMAIN_PATTERN
from tributary_ingest.batches import error_type
from tributary_ingest.bus import GatewayBus, open_gateway_bus
from tributary_ingest.points import DOMAIN_RE, check_identifier
from tributary_runtime.ops import Reply, json_response, ops_routes

SERVICE_NAME = "csv-importer"
JOB_ID_CHARS = frozenset("0123456789abcdef")

log = structlog.get_logger("csv_importer")


@dataclass
class Bus:
    """What the lifespan connects; the handlers use it."""

    jobs: JobStore
    runner: JobRunner
    guard: RequestGuard
    audit: AuditLog
    gateway: GatewayBus


def create_app(settings: CsvImporterSettings, *, nats_client: Client | None = None) -> Starlette:
    """Build the importer. ``nats_client`` (used, never closed) replaces the default
    ``connect_nats(settings)`` connection."""
    ns = settings.namespace
    spool_dir = Path(settings.spool_dir)
    state: dict[str, Bus] = {}
    limiter = IngestLimiter(settings)

    async def start() -> Bus:
        gateway = await open_gateway_bus(
            settings, SERVICE_NAME, Transport.CSV, nats_client=nats_client, linger_seconds=0
        )
        jobs = JobStore(await gateway.js.key_value(ns.bucket(CSV_JOBS_BUCKET)))
        runner = JobRunner(
            jobs,
            gateway.publisher,
            max_concurrent_jobs=settings.max_concurrent_jobs,
            max_errors_kept=settings.max_errors_kept,
            publish_timeout=settings.publish_timeout_seconds,
            publish_retries=settings.publish_retries,
            limiter=limiter,
        )
        audit = AuditLog(gateway.js, ns, SERVICE_NAME)
        guard = RequestGuard(gateway.keys, limiter, audit)
        return Bus(jobs, runner, guard, audit, gateway)

    async def resume(bus: Bus) -> None:
        """Pick up every unfinished job; forget finished ones past the retention."""
        oldest = now() - timedelta(hours=settings.job_retention_hours)
        for job in sorted(await bus.jobs.all(), key=lambda j: j.created_at):
            if job.status.finished:
                if (job.finished_at or job.updated_at) < oldest:
                    await bus.jobs.delete(job.job_id)
                continue
            job.resumed += 1
            JOBS_RESUMED.inc()
            log.info("job_resumed", job_id=job.job_id, chunks_done=job.checkpoint.chunks_done)
            bus.runner.start(job)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        prepare_spool_dir(spool_dir)
        bus = await start()
        state["bus"] = bus
        await resume(bus)
        log.info("started", port=settings.port, nats_url=settings.nats_url, spool=str(spool_dir))
        try:
            yield
        finally:
            await bus.runner.stop()
            state.clear()
            await bus.audit.close()
            await bus.gateway.close()

    async def ready_check() -> dict[str, bool]:
        bus = state.get("bus")
        return await bus.gateway.ready() if bus else {"nats": False, "stream": False}

    def unavailable(stage: str, exc: BaseException) -> Reply:
        kind = error_type(exc)
        ERRORS.labels(stage, kind).inc()
        log.warning("bus_unavailable", stage=stage, error_type=kind, detail=repr(exc))
        return Reply(
            503,
            {
                "error": "the message bus did not answer; retry later",
                "retry_after": settings.retry_after_seconds,
            },
            {"Retry-After": str(settings.retry_after_seconds)},
        )

    async def connected(request: Request, what: str = "requests") -> tuple[Bus, Granted]:
        """Client IP budget (429), then the key (401/403); the bus and who asks."""
        bus = state.get("bus")
        if bus is None:
            raise unavailable("startup", RuntimeError("not started"))
        bus.guard.admit(request, what)
        try:
            granted = await bus.guard.authenticate(request)
        except Reply:
            raise
        except Exception as exc:
            raise unavailable("auth", exc) from None
        return bus, granted

    def check_fields(fields: dict[str, str]) -> tuple[str, str | None]:
        domain = fields.get("domain", "").strip()
        if not domain:
            raise Reply(422, {"error": "domain is required", "field": "domain"})
        if not DOMAIN_RE.match(domain):
            raise Reply(422, {"error": f"domain must match {DOMAIN_PATTERN}", "field": "domain"})
        source_id = fields.get("source_id", "").strip() or None
        if source_id is not None and (problem := check_identifier(source_id, "source_id")):
            raise Reply(422, {"error": problem, "field": "source_id"})
        return domain, source_id

    async def upload(request: Request) -> Response:
        bus, granted = await connected(request, "uploads")
        if granted.record.role is Role.READ_ONLY:  # refused before the file is received
            bus.guard.check(request, granted, Action.WRITE_POINTS)
        job_id = uuid.uuid4().hex
        path = spool_dir / f"{job_id}.csv"
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
            bus.guard.check(request, granted, Action.WRITE_POINTS, domain, source_id)
            options = detect_options(received.fields, received.head, received.utf8_valid)
            if options.has_source_column and check_access(
                granted.record, Action.WRITE_POINTS, domain, None
            ):  # its rows name their own sources, so the key must be allowed any source
                bus.guard.deny(
                    request,
                    granted,
                    "the file has a source_id column, so its rows may name any source: it needs "
                    f"a key allowed every source (this key's scope: {granted.record.scope_text()})",
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
            await bus.jobs.put(job)
        except Exception as exc:
            remove_spool_file(path)
            raise unavailable("jobs", exc) from None
        bus.runner.start(job)
        log.info(
            "job_created", job_id=job_id, domain=domain, source_id=source_id, bytes=received.size
        )
        return json_response(
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

    async def get_job(bus: Bus, job_id: str) -> Job:
        if len(job_id) != 32 or not JOB_ID_CHARS.issuperset(job_id):
            raise Reply(404, {"error": f"no job {job_id[:64]!r}"})
        try:
            job = await bus.jobs.get(job_id)
        except Exception as exc:
            raise unavailable("jobs", exc) from None
        if job is None:
            raise Reply(404, {"error": f"no job {job_id!r}"})
        return job

    async def show_job(request: Request) -> Response:
        bus, _ = await connected(request)
        job = await get_job(bus, request.path_params["job_id"])
        return json_response(200, job.public())

    async def list_jobs(request: Request) -> Response:
        bus, _ = await connected(request)
        try:
            limit = int(request.query_params.get("limit", settings.jobs_listed))
        except ValueError:
            raise Reply(422, {"error": "limit must be an integer", "field": "limit"}) from None
        limit = max(1, min(limit, 1000))
        status = request.query_params.get("status")
        try:
            jobs = await bus.jobs.all()
        except Exception as exc:
            raise unavailable("jobs", exc) from None
        if status:
            jobs = [j for j in jobs if j.status.value == status]
        jobs.sort(key=lambda j: j.created_at, reverse=True)
        # Without the error lists, so the listing stays small; GET one job for its errors.
        listed = [{k: v for k, v in j.public().items() if k != "errors"} for j in jobs[:limit]]
        return json_response(200, {"jobs": listed, "total": len(jobs)})

    async def cancel_job(request: Request) -> Response:
        bus, granted = await connected(request)
        job = await get_job(bus, request.path_params["job_id"])
        bus.guard.check(request, granted, Action.WRITE_POINTS, job.domain, job.source_id)
        if job.status.finished:
            return json_response(
                409, {"error": f"job is already {job.status.value}"} | {"job": job.public()}
            )
        if not await bus.runner.cancel(job.job_id):
            # Not running in this process (e.g. another replica's, or waiting): mark it here.
            job.status, job.reason, job.finished_at = (
                JobStatus.CANCELLED,
                "cancelled by DELETE",
                now(),
            )
            try:
                await bus.jobs.put(job)
            except Exception as exc:
                raise unavailable("jobs", exc) from None
            remove_spool_file(job.spool_file)
        job = await get_job(bus, job.job_id)
        return json_response(200, job.public())

    Endpoint = Callable[[Request], Awaitable[Response]]

    def handler(fn: Endpoint, count: bool = False) -> Endpoint:
        async def run(request: Request) -> Response:
            try:
                response = await fn(request)
            except Reply as reply:
                response = json_response(reply.status, reply.body, reply.headers)
            except Exception as exc:
                ERRORS.labels("handler", "unexpected").inc()
                log.exception("request_failed", error=repr(exc))
                response = json_response(500, {"error": "internal error; it was logged"})
            if count:
                UPLOADS.labels(str(response.status_code)).inc()
            return response

        return run

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return json_response(exc.status_code, {"error": exc.detail}, exc.headers)

    routes = [
        Route("/ingest/csv", handler(upload, count=True), methods=["POST"]),
        Route("/ingest/csv/jobs", handler(list_jobs), methods=["GET"]),
        Route("/ingest/csv/jobs/{job_id}", handler(show_job), methods=["GET"]),
        Route("/ingest/csv/jobs/{job_id}", handler(cancel_job), methods=["DELETE"]),
        *ops_routes(ready_check),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error}
    )
    app.add_middleware(
        HeaderLimits, max_bytes=settings.max_header_bytes, max_count=settings.max_header_count
    )
    return app
