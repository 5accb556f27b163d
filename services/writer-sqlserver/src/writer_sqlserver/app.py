"""Wiring: settings → engine + schema check, NATS pull consumer, circuit breaker, ops routes.

The consume loop is ``tributary_runtime.writer.consume`` (as writer-postgres). pyodbc is
blocking, so each transaction and the breaker's probe run in a worker thread; one loop keeps
writes in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Callable
from typing import Any

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
from tributary_runtime.ops import ops_routes
from tributary_runtime.writer import check_consumer, consume
from writer_sqlserver import metrics
from writer_sqlserver.consume import CONSUMER, ClassifiedWriter
from writer_sqlserver.database import SchemaMissing, build_engine, check_schema
from writer_sqlserver.errors import Failure, classify_error, describe_error
from writer_sqlserver.settings import WriterSqlServerSettings
from writer_sqlserver.store import LegacyStore

log = structlog.get_logger(__name__)

async def _retry_transient(what: str, action: Callable[[], Any], within: float) -> Any:
    """Run blocking ``action`` in a thread, retrying transient failures for ``within`` s."""
    deadline = time.monotonic() + within
    while True:
        try:
            return await asyncio.to_thread(action)
        except SchemaMissing:
            raise
        except Exception as exc:
            if classify_error(exc) is Failure.PERMANENT or time.monotonic() > deadline:
                raise
            log.warning(f"{what} not reachable yet, retrying", error=describe_error(exc))
            await asyncio.sleep(1.0)


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
        self._task: asyncio.Task[None] | None = None

    async def start(self) -> None:
        s = self.settings
        self.engine = build_engine(s)
        engine = self.engine
        await _retry_transient(
            "database",
            lambda: check_schema(engine, s.mssql_write_mode, s.mssql_create_schema),
            s.startup_timeout_seconds,
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
        self._task = asyncio.create_task(
            consume(js, s, WRITER_SQLSERVER_DURABLE, DP_CLASSIFIED, self.writer.handle,
                    self._stopping, breaker=self.breaker, metrics=metrics, log=log,
                    describe=describe_error),
            name="consume",
        )
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
        self._stopping.set()
        if self._task is not None:
            try:
                await asyncio.wait_for(asyncio.shield(self._task),
                                       timeout=self.settings.write_timeout_seconds)
            except TimeoutError:  # unacked messages are redelivered after the ack wait
                self._task.cancel()
                await asyncio.gather(self._task, return_exceptions=True)
        await self.breaker.close()
        if self.nc is not None:
            with contextlib.suppress(Exception):
                await self.nc.flush(timeout=5)  # the last acks and naks
            await self.nc.close()
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
    service = WriterService(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await service.start()
        try:
            yield
        finally:
            await service.stop()

    app = Starlette(routes=ops_routes(service.ready), lifespan=lifespan)
    app.state.service = service
    return app
