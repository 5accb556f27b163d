"""Wiring: Starlette app with the CSV job API (``handlers``), ``/health``, ``/ready``,
``/metrics``.

``POST /ingest/csv`` (multipart, ``X-API-Key``) streams the file to the spool directory, creates
a job in the ``csv-jobs`` bucket and replies 202 with its id at once; the job then publishes
``PointBatch``es (``transport=csv``) in ``PointBundle``s on ``dp.raw.<domain>.part.<p>`` and bad
cells on ``dp.rejected.csv``. ``GET /ingest/csv/jobs[/{job_id}]`` shows jobs, ``DELETE
/ingest/csv/jobs/{job_id}`` cancels one. At start every unfinished job resumes.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from datetime import timedelta
from pathlib import Path

import structlog
from nats.aio.client import Client
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from csv_importer import handlers
from csv_importer.handlers import CsvContext
from csv_importer.jobs import JobStore
from csv_importer.metrics import ERRORS
from csv_importer.runner import JobRunner
from csv_importer.settings import CsvImporterSettings
from csv_importer.upload import prepare_spool_dir
from tributary_access.guard import HeaderLimits
from tributary_contracts import CSV_JOBS_BUCKET, Transport
from tributary_ingest.gateway import GatewayMetrics, not_started, open_gateway
from tributary_ingest.http import Count, Handler, Slot, endpoint
from tributary_runtime.ops import json_response, ops_routes

SERVICE_NAME = "csv-importer"
METRICS = GatewayMetrics(ERRORS)

log = structlog.get_logger("csv_importer")


def create_app(settings: CsvImporterSettings, *, nats_client: Client | None = None) -> Starlette:
    """Build the importer. ``nats_client`` (used, never closed) replaces the default
    ``connect_nats(settings)`` connection."""
    spool_dir = Path(settings.spool_dir)
    unstarted = functools.partial(not_started, settings, METRICS)
    slot: Slot[CsvContext] = Slot()

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        prepare_spool_dir(spool_dir)
        gateway = await open_gateway(
            settings,
            SERVICE_NAME,
            Transport.CSV,
            METRICS,
            linger_seconds=0,
            nats_client=nats_client,
        )
        jobs = JobStore(await gateway.js.key_value(settings.namespace.bucket(CSV_JOBS_BUCKET)))
        runner = JobRunner(
            jobs,
            gateway.publisher,
            max_concurrent_jobs=settings.max_concurrent_jobs,
            max_errors_kept=settings.max_errors_kept,
            publish_timeout=settings.publish_timeout_seconds,
            publish_retries=settings.publish_retries,
            limiter=gateway.guard.limiter,
        )
        slot.value = CsvContext(gateway, jobs, runner, spool_dir)
        await runner.resume(timedelta(hours=settings.job_retention_hours))
        log.info("started", port=settings.port, nats_url=settings.nats_url, spool=str(spool_dir))
        try:
            yield
        finally:
            await runner.stop()
            slot.value = None
            await gateway.close()

    async def ready_check() -> dict[str, bool]:
        ctx = slot.value
        return await ctx.gateway.ready() if ctx else {"nats": False, "stream": False}

    def route(path: str, method: str, handler: Handler[CsvContext], count: Count = None) -> Route:
        run = endpoint(slot, handler, unstarted, ERRORS, count=count)
        return Route(path, run, methods=[method])

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return json_response(exc.status_code, {"error": exc.detail}, exc.headers)

    routes = [
        route("/ingest/csv", "POST", handlers.upload, handlers.count_upload),
        route("/ingest/csv/jobs", "GET", handlers.list_jobs),
        route("/ingest/csv/jobs/{job_id}", "GET", handlers.show_job),
        route("/ingest/csv/jobs/{job_id}", "DELETE", handlers.cancel_job),
        *ops_routes(ready_check),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error}
    )
    app.add_middleware(
        HeaderLimits, max_bytes=settings.max_header_bytes, max_count=settings.max_header_count
    )
    return app
