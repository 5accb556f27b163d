"""Wiring: NATS, the config watch, the state load, the pull loop, the ops app."""

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
from classifier.handler import CoalescingOutbox, JetStreamOutbox, RawBatchHandler
from classifier.partition import PartitionFilter, ensure_partition_consumer
from classifier.rollout import RolloutFollower
from classifier.settings import ClassifierSettings
from classifier.state import ClassifierState
from tributary_contracts import (
    CLASSIFIER_STATE_BUCKET,
    DP_RAW,
    ROLLOUTS_BUCKET,
    STREAM_CONFIGS_BUCKET,
    ensure_jetstream,
)
from tributary_runtime.bus import connect_nats
from tributary_runtime.ops import ops_routes

log = structlog.get_logger(__name__)

SERVICE_NAME = "tributary-classifier"


async def check_staleness_forever(handler: RawBatchHandler, settings: ClassifierSettings) -> None:
    """Every ``STALENESS_CHECK_INTERVAL_SECONDS``: open staleness alerts on silent streams."""
    while True:
        await asyncio.sleep(settings.staleness_check_interval_seconds)
        try:
            await handler.check_staleness(settings.staleness_max_events)
        except Exception:  # the next round tries again; never let the loop die
            log.exception("staleness check failed")


async def flush_checkpoints_forever(
    checkpointer: Checkpointer, settings: ClassifierSettings
) -> None:
    """Every ``CHECKPOINT_INTERVAL_SECONDS``: checkpoint streams whose latest point moved."""
    while True:
        await asyncio.sleep(settings.checkpoint_interval_seconds)
        try:
            await checkpointer.flush_dirty()
        except Exception:
            log.exception("checkpoint flush failed")


def create_app(settings: ClassifierSettings) -> Starlette:
    """The ops app; its lifespan runs the classifier (config watch + state load + consume loop)."""
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
        partitions, index = settings.classifier_partitions, settings.classifier_partition
        durable = await ensure_partition_consumer(js, ns, index, partitions)
        partition = PartitionFilter(ns, index, partitions) if partitions > 1 else None
        store = StreamConfigStore(await js.key_value(ns.bucket(STREAM_CONFIGS_BUCKET)))
        await store.start(settings.config_load_timeout_seconds)
        rollouts = RolloutFollower(await js.key_value(ns.bucket(ROLLOUTS_BUCKET)))
        await rollouts.start(settings.config_load_timeout_seconds)
        state = ClassifierState()
        state_bucket = ns.bucket(CLASSIFIER_STATE_BUCKET)
        follower = StateFollower(
            await js.key_value(state_bucket),
            state,
            owns_source=partition.owns_source if partition is not None else None,
        )
        await follower.start(settings.state_load_timeout_seconds)
        outbox = CoalescingOutbox(JetStreamOutbox(js, settings.publish_timeout_seconds))
        checkpointer = Checkpointer(outbox, state, state_bucket)
        handler = RawBatchHandler(
            ns,
            rollouts.resolver(store.resolve),
            outbox,
            state,
            checkpointer=checkpointer,
            rollouts=rollouts,
            live_resolve=store.resolve,
            nak_delay=settings.nak_delay_seconds,
            nak_max_delay=settings.nak_max_delay_seconds,
            owns_subject=partition.owns_subject if partition is not None else None,
        )
        stopping = asyncio.Event()
        consumer = asyncio.create_task(
            consume(
                js,
                ns.stream(DP_RAW),
                durable,
                handler,
                stopping,
                batch_size=settings.fetch_batch_size,
                fetch_timeout=settings.fetch_timeout_seconds,
                max_inflight=settings.max_inflight_fetches,
            ),
            name="classifier-consume",
        )
        loops = [
            asyncio.create_task(check_staleness_forever(handler, settings), name="staleness"),
            asyncio.create_task(
                flush_checkpoints_forever(checkpointer, settings), name="checkpoint-flush"
            ),
        ]
        app.state.handler = handler
        app.state.store = store
        app.state.state = state
        log.info(
            "classifier started",
            configs=len(store),
            streams=len(state),
            subject=ns.all_raw(),
            durable=durable,
            partition=f"{index} of {partitions}",
        )
        try:
            yield
        finally:
            for loop in loops:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
            await store.stop()
            await rollouts.stop()
            stopping.set()  # no more fetches; the fetches in flight get their acks
            await consumer
            with contextlib.suppress(Exception):  # a clean stop leaves nothing to catch up
                await asyncio.wait_for(checkpointer.flush_dirty(limit=1_000_000), 10)
            await follower.stop()
            with contextlib.suppress(Exception):
                await nc.drain()
            log.info("classifier stopped")

    return Starlette(routes=ops_routes(ready_check), lifespan=lifespan)
