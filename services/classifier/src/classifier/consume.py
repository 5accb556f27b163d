"""The pull loop on one durable consumer: fetch, classify, publish; acks by snapshot.

A plain nats-py ``pull_subscribe_bind`` + ``fetch`` loop (as writer-postgres does), not
FastStream's subscriber: FastStream ran the handler once per message through its dependency
injection, middlewares and a task group (≈ 10–15 % of the CPU in a profile), and it fetched the
next batch only once every handler call of the previous one had its publish acks. Here:

1. ``fetch`` up to ``FETCH_BATCH_SIZE`` messages and parse them;
2. sources evicted from memory are read back from the bucket (``StateLoader``);
3. ``RawBatchHandler.prepare`` classifies them all at once, without an ``await``, so the
   per-stream state sees the points in delivery order, and the partition's checkpoint takes
   the messages (acked by its next snapshot);
4. ``RawBatchHandler.publish`` sends the outputs, in a task, while the loop already fetches and
   classifies the next batch. At most ``MAX_INFLIGHT_FETCHES`` fetches publish at once; the
   loop waits for the oldest before it fetches more.

A failed fetch (bus restarting, consumer briefly missing) is counted, logged and retried after
a second; nats-py reconnects underneath. On stop the loop fetches no more and waits for the
publishes in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats.errors
import structlog

from classifier.checkpoint import PartitionCheckpoint, StateLoader
from classifier.handler import Parsed, RawBatchHandler
from classifier.metrics import ERRORS, RESTORED_SOURCES

log = structlog.get_logger(__name__)


def _published(task: asyncio.Task[Any]) -> None:
    """Report a publish task that failed (a defect): its inputs come back after ``ack_wait``."""
    if not task.cancelled() and task.exception() is not None:
        ERRORS.labels(stage="publish", error_type=type(task.exception()).__name__).inc()
        log.error("publishing a fetch's outputs failed", error=repr(task.exception()))


async def restore(
    handler: RawBatchHandler,
    loader: StateLoader,
    parsed: list[Parsed],
    stopping: asyncio.Event,
) -> bool:
    """Bring back the evicted sources of ``parsed`` from the bucket, retrying until it works:
    these messages must be classified before any later one (a later bundle of a source moves
    its covered position past them). False when stopping first."""
    evicted = handler.evicted_sources(parsed)
    while evicted:
        try:
            RESTORED_SOURCES.inc(await loader.load(handler.state, evicted))
            return True
        except Exception as exc:
            ERRORS.labels(stage="state_load", error_type=type(exc).__name__).inc()
            log.warning("restoring evicted sources failed, retrying", error=repr(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stopping.wait(), timeout=1.0)
            if stopping.is_set():
                return False
    return True


async def consume(
    js: Any,
    stream: str,
    durable: str,
    handler: RawBatchHandler,
    checkpoint: PartitionCheckpoint,
    stopping: asyncio.Event,
    *,
    loader: StateLoader | None = None,
    batch_size: int,
    fetch_timeout: float,
    max_inflight: int,
    until_idle: bool = False,
) -> None:
    """Fetch from ``durable`` on ``stream`` into ``handler`` until ``stopping`` is set (with
    ``until_idle``: or until the durable has nothing left to deliver)."""
    sub: Any = None
    inflight: set[asyncio.Task[Any]] = set()
    try:
        while not stopping.is_set():
            try:
                if sub is None:
                    sub = await js.pull_subscribe_bind(durable=durable, stream=stream)
                try:
                    msgs = await sub.fetch(batch_size, timeout=fetch_timeout)
                except (TimeoutError, nats.errors.TimeoutError):
                    if until_idle and not (await sub.consumer_info()).num_pending:
                        return
                    continue  # nothing to do right now
                parsed = handler.parse(msgs)
                if loader is not None and not await restore(handler, loader, parsed, stopping):
                    return  # stopping: these messages come back, unacked, after the restart
                prepared = handler.prepare(parsed)
                task = asyncio.create_task(handler.publish(prepared), name="classifier-publish")
                checkpoint.track(prepared.inputs, task)
                inflight.add(task)
                task.add_done_callback(_published)
                task.add_done_callback(inflight.discard)
                if len(inflight) >= max_inflight:
                    await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
            except Exception as exc:
                ERRORS.labels(stage="fetch", error_type=type(exc).__name__).inc()
                log.warning("fetch failed, retrying", error=repr(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=1.0)
    finally:
        if inflight:  # their outputs are on the way: let them be acked
            await asyncio.gather(*inflight, return_exceptions=True)
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
