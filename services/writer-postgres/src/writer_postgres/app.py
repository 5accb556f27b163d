"""Wiring: settings → migrations, asyncpg pool, circuit breaker, NATS pull consumers (the points
and the event loops, each ``tributary_runtime.writer.consume``), partition upkeep, ops routes.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import asyncpg
import structlog
from nats.aio.client import Client
from starlette.applications import Starlette

from tributary_contracts import (
    AUDIT,
    DP_CLASSIFIED,
    DP_EVENTS,
    DP_LEDGER,
    DP_REJECTED,
    DP_SHADOW,
    WRITER_POSTGRES_ALERTS_DURABLE,
    WRITER_POSTGRES_AUDIT_DURABLE,
    WRITER_POSTGRES_DURABLE,
    WRITER_POSTGRES_LEDGER_DURABLE,
    WRITER_POSTGRES_REJECTS_DURABLE,
    WRITER_POSTGRES_SHADOW_DURABLE,
    ensure_consumer,
    ensure_jetstream,
)
from tributary_runtime.breaker import CircuitBreaker
from tributary_runtime.bus import connect_nats
from tributary_runtime.delivery import DeadLetterPublish, dead_letter_publisher
from tributary_runtime.writer import (
    check_consumer,
    consume,
    retry_transient,
    stop_consuming,
    writer_app,
)
from writer_postgres import metrics
from writer_postgres.alerts import AlertStore, AlertWriter
from writer_postgres.audit import AuditStore, AuditWriter
from writer_postgres.consume import CONSUMER, ClassifiedWriter
from writer_postgres.errors import Failure, classify_error, describe_error
from writer_postgres.events import EventWriter
from writer_postgres.ledger import LedgerStore, LedgerWriter
from writer_postgres.migrate import migrate, storage_mode
from writer_postgres.partitions import ensure_partitions
from writer_postgres.rejects import RejectStore, RejectWriter
from writer_postgres.settings import WriterPostgresSettings
from writer_postgres.shadow import ShadowStore, ShadowWriter
from writer_postgres.store import PointStore, keep_session, prepare_connection

log = structlog.get_logger(__name__)

class WriterService:
    """The running writer: pool, NATS, consume loop, maintenance; run by the app's lifespan."""

    def __init__(self, settings: WriterPostgresSettings) -> None:
        self.settings = settings
        self.pool: asyncpg.Pool | None = None
        self.nc: Client | None = None
        self.writer: ClassifiedWriter | None = None
        self.alerts: AlertWriter | None = None
        self.rejects: RejectStore | None = None
        self.ledger: LedgerStore | None = None
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []
        self.breaker: CircuitBreaker | None = None

    async def start(self) -> None:
        s = self.settings
        await retry_transient(
            "PostgreSQL",
            lambda: migrate(s.dsn, s.partition_months_back, s.partition_months_ahead),
            s.startup_timeout_seconds,
            is_transient=lambda exc: classify_error(exc) is Failure.TRANSIENT,
            describe=describe_error, log=log,
        )
        self.pool = await asyncpg.create_pool(
            s.dsn, min_size=1, max_size=s.pool_size, init=prepare_connection, reset=keep_session,
            command_timeout=s.write_timeout_seconds,
        )
        self.nc = await connect_nats(s, CONSUMER)
        js = self.nc.jetstream()
        await ensure_jetstream(js, s.namespace)
        for durable in (
            WRITER_POSTGRES_DURABLE, WRITER_POSTGRES_ALERTS_DURABLE, WRITER_POSTGRES_AUDIT_DURABLE,
            WRITER_POSTGRES_REJECTS_DURABLE, WRITER_POSTGRES_LEDGER_DURABLE,
            WRITER_POSTGRES_SHADOW_DURABLE,
        ):
            await ensure_consumer(js, s.namespace, durable)
            await check_consumer(js, s.namespace, durable)
        pool = self.pool
        self.breaker = breaker = CircuitBreaker(
            lambda: pool.fetchval("SELECT 1", timeout=2), metrics, log, store="PostgreSQL",
            threshold=s.breaker_failure_threshold, probe_max_seconds=s.breaker_probe_max_seconds,
        )
        self.writer = ClassifiedWriter(
            store=PointStore(self.pool, s.write_timeout_seconds),
            routes=s.routes,
            dead_letter=dead_letter_publisher(js, s.namespace, CONSUMER),
            backoff_seconds=s.nak_backoff_seconds,
            backoff_max_seconds=s.nak_backoff_max_seconds,
            breaker=breaker,
        )
        self._stopping.clear()

        def loop(handle: Any, durable: str, stream_base: str) -> asyncio.Task[None]:
            """A consume loop (``tributary_runtime.writer.consume``), paused by the breaker."""
            return asyncio.create_task(
                consume(js, s, durable, stream_base, handle, self._stopping, breaker=breaker,
                        metrics=metrics, log=log, describe=describe_error),
                name=f"consume-{durable}",
            )

        self._tasks = [
            loop(self.writer.handle, WRITER_POSTGRES_DURABLE, DP_CLASSIFIED)
            for _ in range(s.consumers)
        ]
        # Alert events are few (one per alert transition): one loop is plenty.
        self.alerts = AlertWriter(
            store=AlertStore(self.pool, s.write_timeout_seconds),
            dead_letter=dead_letter_publisher(js, s.namespace, WRITER_POSTGRES_ALERTS_DURABLE),
            backoff_seconds=s.nak_backoff_seconds,
            backoff_max_seconds=s.nak_backoff_max_seconds,
        )
        self._tasks.append(loop(self.alerts.handle, WRITER_POSTGRES_ALERTS_DURABLE, DP_EVENTS))
        # Audit events (ISO 27001 A.12.4) → ingestion_audit_log; few, one loop.
        audit = AuditWriter(
            AuditStore(self.pool, s.write_timeout_seconds),
            dead_letter_publisher(js, s.namespace, WRITER_POSTGRES_AUDIT_DURABLE),
            s.nak_backoff_seconds, s.nak_backoff_max_seconds,
        )
        self._tasks.append(loop(audit.handle, WRITER_POSTGRES_AUDIT_DURABLE, AUDIT))
        # Rejects, raw ledger, shadow verdicts: few messages each, one loop each.
        self.rejects = RejectStore(self.pool, s.write_timeout_seconds, s.reject_excerpt_bytes)
        self.ledger = LedgerStore(self.pool, s.write_timeout_seconds)
        retry = (s.nak_backoff_seconds, s.nak_backoff_max_seconds)

        def dead_letter(durable: str) -> DeadLetterPublish:
            return dead_letter_publisher(js, s.namespace, durable)

        event_loops: list[tuple[EventWriter[Any], str, str]] = [
            (
                RejectWriter(self.rejects, dead_letter(WRITER_POSTGRES_REJECTS_DURABLE), *retry),
                WRITER_POSTGRES_REJECTS_DURABLE,
                DP_REJECTED,
            ),
            (
                LedgerWriter(self.ledger, dead_letter(WRITER_POSTGRES_LEDGER_DURABLE), *retry),
                WRITER_POSTGRES_LEDGER_DURABLE,
                DP_LEDGER,
            ),
            (
                ShadowWriter(
                    ShadowStore(self.pool, s.write_timeout_seconds),
                    dead_letter(WRITER_POSTGRES_SHADOW_DURABLE),
                    *retry,
                ),
                WRITER_POSTGRES_SHADOW_DURABLE,
                DP_SHADOW,
            ),
        ]
        for events, durable, stream_base in event_loops:
            self._tasks.append(loop(events.handle, durable, stream_base))
        self._tasks.append(asyncio.create_task(self._keep_partitions(), name="partitions"))
        log.info("writer-postgres started", subject=s.namespace.all_classified(),
                 durable=WRITER_POSTGRES_DURABLE, alerts_subject=s.namespace.all_alerts(),
                 alerts_durable=WRITER_POSTGRES_ALERTS_DURABLE, routes=s.sink_routes)

    async def _keep_partitions(self) -> None:
        """Every ``partition_check_seconds``: make sure monthly partitions exist ahead and
        delete the expired rows of ``ingest_rejects`` and ``raw_record``."""
        s = self.settings
        while not self._stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self._stopping.wait(), timeout=s.partition_check_seconds)
                return
            try:
                assert self.pool is not None
                async with self.pool.acquire() as conn:
                    if await storage_mode(conn) == "partitioned":
                        await ensure_partitions(
                            conn, s.partition_months_back, s.partition_months_ahead
                        )
                assert self.rejects is not None and self.ledger is not None
                await self.rejects.delete_expired(s.rejects_retention_days * 86400)
                await self.ledger.delete_expired(s.raw_ledger_retention_days * 86400)
            except Exception as exc:  # next round retries; the DEFAULT partition takes points
                metrics.ERRORS.labels("partitions", type(exc).__name__).inc()
                log.warning("partition maintenance failed", error=describe_error(exc))

    async def stop(self) -> None:
        """Let the current fetches finish (their acks sent), then close NATS and the pool."""
        await stop_consuming(self._stopping, self._tasks, self.settings.write_timeout_seconds,
                             self.breaker, self.nc)
        if self.pool is not None:
            await asyncio.wait_for(self.pool.close(), timeout=10)

    async def ready(self) -> dict[str, bool]:
        """Readiness: NATS connected and PostgreSQL answering."""
        nats_ok = self.nc is not None and self.nc.is_connected
        db_ok = False
        if self.pool is not None:
            try:
                db_ok = await self.pool.fetchval("SELECT 1", timeout=2) == 1
            except Exception:
                db_ok = False
        return {"nats": nats_ok, "postgres": db_ok}


def create_app(settings: WriterPostgresSettings) -> Starlette:
    """The ASGI app: ``/health``, ``/ready``, ``/metrics``; its lifespan runs the writer."""
    return writer_app(WriterService(settings))
