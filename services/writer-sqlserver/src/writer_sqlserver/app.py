"""Wiring: settings → engine + schema check, NATS pull consumer, circuit breaker, ops routes.

Like writer-postgres, the consume loop uses nats-py's ``pull_subscribe_bind`` + ``fetch``
directly (FastStream's batch pull subscriber in 0.7.8 loses a fetch's messages until the ack
wait when nats-py ends a fetch with a plain ``asyncio.TimeoutError``). pyodbc is blocking, so
each transaction runs in a worker thread; one loop keeps writes in order.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from typing import Any

import structlog
from nats.aio.client import Client
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from sqlalchemy import text
from sqlalchemy.engine import Engine
from starlette.applications import Starlette

from tributary_contracts import (
    DP_CLASSIFIED,
    WRITER_SQLSERVER_DURABLE,
    ensure_consumer,
    ensure_jetstream,
)
from tributary_runtime.bus import connect_nats
from tributary_runtime.ops import ops_routes
from tributary_runtime.writer import check_consumer, dead_letter_publisher, pause, pull_loop
from writer_sqlserver import metrics
from writer_sqlserver.breaker import BreakerState, CircuitBreaker
from writer_sqlserver.consume import CONSUMER, ClassifiedWriter
from writer_sqlserver.database import SchemaMissing, build_engine, check_schema
from writer_sqlserver.errors import Failure, classify_error, describe_error
from writer_sqlserver.settings import WriterSqlServerSettings
from writer_sqlserver.store import LegacyStore

log = structlog.get_logger(__name__)

FetchHandler = Callable[[Sequence[Msg]], Awaitable[None]]


async def consume(
    js: JetStreamContext, settings: WriterSqlServerSettings, handle: FetchHandler,
    breaker: CircuitBreaker, stopping: asyncio.Event,
) -> None:
    """Fetch from the durable ``writer-sqlserver`` into ``handle`` until ``stopping``; while the
    breaker is open, fetch nothing. Never ends on an error (counted, logged, retried)."""

    async def ready() -> bool:
        metrics.BREAKER_OPEN.set(0 if breaker.allow() else 1)
        if not breaker.allow():
            await pause(stopping, min(1.0, breaker.seconds_until_trial() or 1.0))
            return False
        return True

    def fetch_size() -> int:
        # The half-open trial takes a single message: one failure costs one delivery.
        return 1 if breaker.state is BreakerState.HALF_OPEN else settings.fetch_batch_size

    await pull_loop(
        js, settings.namespace.stream(DP_CLASSIFIED), WRITER_SQLSERVER_DURABLE, handle, stopping,
        fetch_size=fetch_size, fetch_timeout=settings.fetch_timeout_seconds, ready=ready,
        on_error=_fetch_failed,
    )


def _fetch_failed(exc: Exception) -> None:
    metrics.ERRORS.labels("fetch", type(exc).__name__).inc()
    log.warning("fetch failed, retrying", error=describe_error(exc))


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
        self.breaker = CircuitBreaker(settings.breaker_failure_threshold,
                                      settings.breaker_open_seconds)
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
            breaker=self.breaker,
            backoff_seconds=s.nak_backoff_seconds,
            backoff_max_seconds=s.nak_backoff_max_seconds,
        )
        self._stopping.clear()
        self._task = asyncio.create_task(
            consume(js, s, self.writer.handle, self.breaker, self._stopping), name="consume"
        )
        log.info("writer-sqlserver started", subject=s.namespace.all_classified(),
                 durable=WRITER_SQLSERVER_DURABLE, routes=s.sink_routes,
                 database=engine.dialect.name, mode=s.mssql_write_mode)

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
            engine = self.engine

            def ping() -> bool:
                with engine.connect() as conn:
                    return conn.execute(text("SELECT 1")).scalar() == 1

            try:
                db_ok = await asyncio.wait_for(asyncio.to_thread(ping), timeout=3)
            except Exception:
                db_ok = False
        return {"nats": nats_ok, "database": db_ok,
                "breaker_closed": self.breaker.state is not BreakerState.OPEN}


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
