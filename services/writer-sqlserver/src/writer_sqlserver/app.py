"""Wiring: settings → engine + schema check, NATS pull consumer, circuit breaker, ops routes.

The consume loop is ``tributary_runtime.writer.consume`` (as writer-postgres). pyodbc is
blocking, so each transaction and the breaker's probe run in a worker thread; one loop keeps
writes in order.
"""

from __future__ import annotations

import asyncio

import structlog
from nats.aio.client import Client
from sqlalchemy import text
from sqlalchemy.engine import Engine
from starlette.applications import Starlette

from tributary_contracts import (
    DP_CLASSIFIED,
    WRITER_SQLSERVER_DURABLE,
    ensure_consumer,
    ensure_jetstream,
)
from tributary_runtime.breaker import CircuitBreaker
from tributary_runtime.bus import connect_nats
from tributary_runtime.delivery import dead_letter_publisher
from tributary_runtime.writer import (
    check_consumer,
    consume,
    retry_transient,
    stop_consuming,
    writer_app,
)
from writer_sqlserver import metrics
from writer_sqlserver.consume import CONSUMER, ClassifiedWriter
from writer_sqlserver.database import SchemaMissing, build_engine, check_schema
from writer_sqlserver.errors import Failure, classify_error, describe_error
from writer_sqlserver.settings import WriterSqlServerSettings
from writer_sqlserver.store import LegacyStore

log = structlog.get_logger(__name__)

class WriterService:
    """The running writer: engine, NATS, consume loop; run by the app's lifespan."""

    def __init__(self, settings: WriterSqlServerSettings) -> None:
        self.settings = settings
        self.engine: Engine | None = None
        self.nc: Client | None = None
        self.writer: ClassifiedWriter | None = None
        self.breaker = CircuitBreaker(
            self._probe, metrics, log, store="SQL Server",
            threshold=settings.breaker_failure_threshold,
            probe_max_seconds=settings.breaker_probe_max_seconds,
        )
        self._stopping = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    async def start(self) -> None:
        s = self.settings
        self.engine = build_engine(s)
        engine = self.engine
        await retry_transient(
            "database",
            lambda: asyncio.to_thread(
                check_schema, engine, s.mssql_write_mode, s.mssql_create_schema
            ),
            s.startup_timeout_seconds,
            is_transient=lambda exc: not isinstance(exc, SchemaMissing)
            and classify_error(exc) is Failure.TRANSIENT,
            describe=describe_error, log=log,
        )
        self.nc = await connect_nats(s, CONSUMER)
        js = self.nc.jetstream()
        await ensure_jetstream(js, s.namespace)
        await ensure_consumer(js, s.namespace, WRITER_SQLSERVER_DURABLE)
        await check_consumer(js, s.namespace, WRITER_SQLSERVER_DURABLE)
        self.writer = ClassifiedWriter(
            store=LegacyStore(engine, s.mssql_write_mode),
            routes=s.routes,
            dead_letter=dead_letter_publisher(js, s.namespace, CONSUMER),
            backoff_seconds=s.nak_backoff_seconds,
            backoff_max_seconds=s.nak_backoff_max_seconds,
            breaker=self.breaker,
        )
        self._stopping.clear()
        self._tasks = [asyncio.create_task(
            consume(js, s, WRITER_SQLSERVER_DURABLE, DP_CLASSIFIED, self.writer.handle,
                    self._stopping, breaker=self.breaker, metrics=metrics, log=log,
                    describe=describe_error),
            name="consume",
        )]
        log.info("writer-sqlserver started", subject=s.namespace.all_classified(),
                 durable=WRITER_SQLSERVER_DURABLE, routes=s.sink_routes,
                 database=engine.dialect.name, mode=s.mssql_write_mode)

    async def _probe(self) -> None:
        """``SELECT 1`` in a worker thread (the breaker's probe)."""
        engine = self.engine
        assert engine is not None

        def ping() -> None:
            with engine.connect() as conn:
                conn.execute(text("SELECT 1"))

        await asyncio.wait_for(asyncio.to_thread(ping), timeout=3)

    async def stop(self) -> None:
        """Let the current fetch finish (its acks sent), then close NATS and the engine."""
        await stop_consuming(self._stopping, self._tasks, self.settings.write_timeout_seconds,
                             self.breaker, self.nc)
        if self.engine is not None:
            await asyncio.to_thread(self.engine.dispose)

    async def ready(self) -> dict[str, bool]:
        """Readiness: NATS connected, database answering, breaker not open."""
        nats_ok = self.nc is not None and self.nc.is_connected
        db_ok = False
        if self.engine is not None:
            try:
                await self._probe()
                db_ok = True
            except Exception:
                db_ok = False
        return {"nats": nats_ok, "database": db_ok, "breaker_closed": not self.breaker.is_open}


def create_app(settings: WriterSqlServerSettings) -> Starlette:
    """The ASGI app: ``/health``, ``/ready``, ``/metrics``; its lifespan runs the writer."""
    return writer_app(WriterService(settings))
