"""Wiring: NATS, the config watch, the state load, one pull loop per owned partition, ops app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog
from nats.aio.client import Client
from starlette.applications import Starlette

from classifier.checkpoint import Checkpointer, StateFollower
from classifier.config_store import StreamConfigStore
from classifier.consume import consume
from classifier.consumers import ensure_drain_durable, ensure_durable
from classifier.handler import RawBatchHandler
from classifier.outbox import CoalescingOutbox, JetStreamOutbox
from classifier.settings import ClassifierSettings
from classifier.state import ClassifierState
from tributary_contracts import (
    CLASSIFIER_STATE_BUCKET,
    DP_RAW,
    STREAM_CONFIGS_BUCKET,
    classifier_partition_consumer,
    ensure_jetstream,
    partition_of,
)
from tributary_runtime.bus import connect_nats
from tributary_runtime.ops import ops_routes

log = structlog.get_logger(__name__)

SERVICE_NAME = "tributary-classifier"


async def check_staleness_forever(
    handlers: list[RawBatchHandler], settings: ClassifierSettings
) -> None:
    """Every ``STALENESS_CHECK_INTERVAL_SECONDS``: open staleness alerts on silent streams."""
    while True:
        await asyncio.sleep(settings.staleness_check_interval_seconds)
        for handler in handlers:
            try:
                await handler.check_staleness(settings.staleness_max_events)
            except Exception:  # the next round tries again; never let the loop die
                log.exception("staleness check failed", partition=handler.partition)


async def flush_checkpoints_forever(
    checkpointers: list[Checkpointer], settings: ClassifierSettings
) -> None:
    """Every ``CHECKPOINT_INTERVAL_SECONDS``: checkpoint streams whose latest point moved."""
    while True:
        await asyncio.sleep(settings.checkpoint_interval_seconds)
        for checkpointer in checkpointers:
            try:
                await checkpointer.flush_dirty()
            except Exception:
                log.exception("checkpoint flush failed")


def create_app(settings: ClassifierSettings) -> Starlette:
    """The ops app; its lifespan runs the classifier (config watch, state load, pull loops)."""
    ns = settings.namespace
    nc: Client | None = None
    store: StreamConfigStore | None = None
    follower: StateFollower | None = None

    async def ready_check() -> dict[str, bool]:
        return {
            "nats": nc is not None and nc.is_connected,
            "stream_configs": store is not None and store.loaded.is_set(),
            "classifier_state": follower is not None and follower.loaded.is_set(),
        }

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal nc, store, follower
        nc = await connect_nats(settings, SERVICE_NAME)
        js = nc.jetstream()
        await ensure_jetstream(js, ns)
        partitions, owned = settings.bus_partitions, settings.owned_partitions
        durables = {
            p: await ensure_durable(js, ns, classifier_partition_consumer(p)) for p in owned
        }
        drains = {p: await ensure_drain_durable(js, ns, p) for p in owned}
        store = StreamConfigStore(await js.key_value(ns.bucket(STREAM_CONFIGS_BUCKET)))
        await store.start(settings.config_load_timeout_seconds)
        states = {p: ClassifierState() for p in owned}
        state_bucket = ns.bucket(CLASSIFIER_STATE_BUCKET)
        follower = StateFollower(
            await js.key_value(state_bucket),
            lambda domain, source_id: states.get(partition_of(domain, source_id, partitions)),
        )
        await follower.start(settings.state_load_timeout_seconds)
        outbox = CoalescingOutbox(JetStreamOutbox(js, settings.publish_timeout_seconds))
        checkpointers = {p: Checkpointer(outbox, states[p], state_bucket) for p in owned}
        handlers = [
            RawBatchHandler(
                ns,
                store.resolve,
                outbox,
                states[p],
                partition=p,
                partitions=partitions,
                checkpointer=checkpointers[p],
                nak_delay=settings.nak_delay_seconds,
                nak_max_delay=settings.nak_max_delay_seconds,
            )
            for p in owned
        ]
        stopping = asyncio.Event()
        consumers = [
            asyncio.create_task(
                consume(
                    js,
                    ns.stream(DP_RAW),
                    durable[handler.partition],
                    handler,
                    stopping,
                    batch_size=settings.fetch_batch_size,
                    fetch_timeout=fetch_timeout,
                    max_inflight=settings.max_inflight_fetches,
                ),
                name=f"classifier-{durable[handler.partition]}",
            )
            for handler in handlers
            for durable, fetch_timeout in (
                (durables, settings.fetch_timeout_seconds),
                # Former per-source subjects: only an upgrade's backlog, so idle fetches are rare.
                (drains, settings.drain_fetch_timeout_seconds),
            )
        ]
        loops = [
            asyncio.create_task(check_staleness_forever(handlers, settings), name="staleness"),
            asyncio.create_task(
                flush_checkpoints_forever(list(checkpointers.values()), settings),
                name="checkpoint-flush",
            ),
        ]
        app.state.handlers = handlers
        app.state.store = store
        app.state.states = states
        log.info(
            "classifier started",
            configs=len(store),
            streams=sum(len(s) for s in states.values()),
            partitions=owned,
            of=partitions,
            replica=f"{settings.classifier_replica} of {settings.classifier_replicas}",
        )
        try:
            yield
        finally:
            for loop in loops:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
            await store.stop()
            stopping.set()  # no more fetches; the fetches in flight get their acks
            await asyncio.gather(*consumers)
            for checkpointer in checkpointers.values():
                with contextlib.suppress(Exception):  # a clean stop leaves nothing to catch up
                    await asyncio.wait_for(checkpointer.flush_dirty(limit=1_000_000), 10)
            await follower.stop()
            with contextlib.suppress(Exception):
                await nc.drain()
            log.info("classifier stopped")

    return Starlette(routes=ops_routes(ready_check), lifespan=lifespan)
