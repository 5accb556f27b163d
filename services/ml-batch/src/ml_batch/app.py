"""Wiring: settings → PostgreSQL pool, NATS, the run loop in the background, ops routes."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from dataclasses import dataclass, field

import asyncpg
import structlog
from nats.aio.client import Client
from starlette.applications import Starlette

from ml_batch.job import MlJob, RunResult, run_forever
from ml_batch.settings import MlBatchSettings
from tributary_contracts import ensure_jetstream
from tributary_runtime.bus import connect_nats
from tributary_runtime.ops import ops_routes

log = structlog.get_logger(__name__)


async def open_pool(settings: MlBatchSettings) -> asyncpg.Pool:
    return await asyncpg.create_pool(settings.dsn, min_size=1, max_size=4, command_timeout=120)


@dataclass
class Connections:
    pool: asyncpg.Pool | None = None
    nc: Client | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)


async def connect_all(
    settings: MlBatchSettings, conns: Connections, stopping: asyncio.Event
) -> MlJob | None:
    """Connect to NATS and PostgreSQL, waiting out outages (the service must not crash-loop
    because a server is late); None when stopped first."""
    conns.nc = await connect_nats(settings, "ml-batch")
    js = conns.nc.jetstream()
    await ensure_jetstream(js, settings.namespace)
    delay = 1.0
    while conns.pool is None and not stopping.is_set():
        try:
            conns.pool = await open_pool(settings)
        except (OSError, asyncpg.PostgresError) as exc:
            log.warning("postgresql unreachable; retrying", error=str(exc), retry_in=delay)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=delay)
            delay = min(delay * 2, 30.0)
    return None if conns.pool is None else MlJob(settings, conns.pool, js)


async def once(settings: MlBatchSettings) -> RunResult:
    """Connect, run once, disconnect (``--once``); errors propagate to the caller."""
    nc = await connect_nats(settings, "ml-batch", reconnect_attempts=2)
    try:
        js = nc.jetstream()
        await ensure_jetstream(js, settings.namespace)
        pool = await open_pool(settings)
        try:
            return await MlJob(settings, pool, js).run_once()
        finally:
            await pool.close()
    finally:
        await nc.close()


def create_app(settings: MlBatchSettings) -> Starlette:
    conns = Connections()
    stopping = asyncio.Event()

    async def loop() -> None:
        delay = 1.0
        while not stopping.is_set():
            try:
                job = await connect_all(settings, conns, stopping)
            except Exception as exc:  # e.g. NATS down at start: wait, retry
                log.warning("cannot connect; retrying", error=f"{type(exc).__name__}: {exc}",
                            retry_in=delay)
                if conns.nc is not None:
                    await conns.nc.close()
                    conns.nc = None
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=delay)
                delay = min(delay * 2, 30.0)
                continue
            if job is not None:
                await run_forever(job, settings.ml_interval_seconds, stopping)
            return

    async def ready() -> dict[str, bool]:
        return {
            "nats": conns.nc is not None and conns.nc.is_connected,
            "postgres": conns.pool is not None,
        }

    @contextlib.asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        conns.tasks.append(asyncio.create_task(loop()))
        try:
            yield
        finally:
            stopping.set()
            for task in conns.tasks:
                try:
                    await asyncio.wait_for(task, timeout=30)
                except (TimeoutError, asyncio.CancelledError):
                    task.cancel()
                except Exception as exc:
                    log.warning("run loop ended with an error", error=str(exc))
            if conns.pool is not None:
                await conns.pool.close()
            if conns.nc is not None:
                await conns.nc.close()

    return Starlette(routes=ops_routes(ready), lifespan=lifespan)
