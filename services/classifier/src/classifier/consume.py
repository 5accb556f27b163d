"""The pull loop on the durable consumer: fetch, classify, publish, ack; fetches pipelined.

A plain nats-py ``pull_subscribe_bind`` + ``fetch`` loop (as writer-postgres does), not
FastStream's subscriber: FastStream ran the handler once per message through its dependency
injection, middlewares and a task group (≈ 10–15 % of the CPU in a profile), and it fetched the
next batch only once every handler call of the previous one had its publish acks. Here:

1. ``fetch`` up to ``FETCH_BATCH_SIZE`` messages;
2. ``RawBatchHandler.prepare`` parses and classifies them all at once, without an ``await``, so
   the per-stream state sees the points in delivery order;
3. ``RawBatchHandler.settle`` publishes the outputs (``publish_async``, acks awaited together)
   and then acks, naks or dead-letters each input: in a task, while the loop already fetches and
   classifies the next batch. At most ``MAX_INFLIGHT_FETCHES`` fetches wait for their acks at
   once; the loop waits for the oldest before it fetches more.

Each input is still acked only after every one of its outputs is acked. A failed fetch (bus
restarting, consumer briefly missing) is counted, logged and retried after a second; nats-py
reconnects underneath. On stop the loop fetches no more and waits for the fetches in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
from typing import Any

import nats.errors
import structlog

from classifier.handler import RawBatchHandler
from classifier.metrics import ERRORS

log = structlog.get_logger(__name__)


def _settled(task: asyncio.Task[Any]) -> None:
    """Report a settle task that failed (a defect): its inputs come back after ``ack_wait``."""
    if not task.cancelled() and task.exception() is not None:
        ERRORS.labels(stage="settle", error_type=type(task.exception()).__name__).inc()
        log.error("settling a fetch failed", error=repr(task.exception()))


async def consume(
    js: Any,
    stream: str,
    durable: str,
    handler: RawBatchHandler,
    stopping: asyncio.Event,
    *,
    batch_size: int,
    fetch_timeout: float,
    max_inflight: int,
) -> None:
    """Fetch from ``durable`` on ``stream`` into ``handler`` until ``stopping`` is set."""
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
                    continue  # nothing to do right now
                prepared = handler.prepare(msgs)
                task = asyncio.create_task(handler.settle(prepared), name="classifier-settle")
                inflight.add(task)
                task.add_done_callback(_settled)
                task.add_done_callback(inflight.discard)
                if len(inflight) >= max_inflight:
                    await asyncio.wait(inflight, return_when=asyncio.FIRST_COMPLETED)
            except Exception as exc:
                ERRORS.labels(stage="fetch", error_type=type(exc).__name__).inc()
                log.warning("fetch failed, retrying", error=repr(exc))
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stopping.wait(), timeout=1.0)
    finally:
        if inflight:  # their outputs are on the way: let them be acked (or nak'ed)
            await asyncio.gather(*inflight, return_exceptions=True)
        if sub is not None:
            with contextlib.suppress(Exception):
                await sub.unsubscribe()
