"""Wiring: NATS, the config watch, the state load, per owned partition its pull loops, its
snapshots, its staleness checks and evictions; the ops app."""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import structlog
from nats.aio.client import Client
from starlette.applications import Starlette

from classifier.checkpoint import PartitionCheckpoint, StateFollower, StateLoader
from classifier.config_store import StreamConfigStore
from classifier.consume import consume
from classifier.consumers import ensure_drain_durable, ensure_durable
from classifier.handler import RawBatchHandler
from classifier.outbox import CoalescingOutbox, JetStreamOutbox
from classifier.rollout import RolloutFollower
from classifier.settings import ClassifierSettings
from classifier.state import ClassifierState
from tributary_contracts import (
    CLASSIFIER_STATE_BUCKET,
    DP_EVENTS,
    DP_RAW,
    MSG_ID_HEADER,
    ROLLOUTS_BUCKET,
    STREAM_CONFIGS_BUCKET,
    classifier_partition_consumer,
    ensure_jetstream,
    partition_of,
)
from tributary_runtime.bus import connect_nats
from tributary_runtime.ops import ops_routes
from tributary_runtime.publish import Outgoing, publish_until_acked

log = structlog.get_logger(__name__)

SERVICE_NAME = "tributary-classifier"


@dataclass
class Partition:
    """What one owned partition runs on: its state, handler and checkpoint."""

    number: int
    state: ClassifierState
    handler: RawBatchHandler
    checkpoint: PartitionCheckpoint


async def every(
    seconds: float, stopping: asyncio.Event, what: str, action: Callable[[], Awaitable[object]]
) -> None:
    """Run ``action`` every ``seconds`` until ``stopping``; a failure is logged, never fatal."""
    while not stopping.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stopping.wait(), seconds)
        if stopping.is_set():
            return
        try:
            await action()
        except Exception:  # the next round tries again
            log.exception(f"{what} failed")


async def check_staleness(partition: Partition, limit: int) -> None:
    """Open staleness alerts on silent streams and publish them; the snapshot after waits for
    them (so the alert never reaches the bucket without its event)."""
    outputs = partition.handler.staleness(limit)
    if outputs:
        task = asyncio.create_task(partition.handler.publish_events(outputs))
        partition.checkpoint.track((), task)
        await task


async def evict_idle(partition: Partition, settings: ClassifierSettings, share: int) -> None:
    """Evict idle sources, and the least recent above this partition's share of
    ``MAX_STREAMS_IN_MEMORY``."""
    await partition.checkpoint.evict_idle(
        settings.state_idle_seconds, settings.max_streams_in_memory // share
    )


def create_app(settings: ClassifierSettings) -> Starlette:
    """The ops app; its lifespan runs the classifier."""
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
        count, owned = settings.bus_partitions, settings.owned_partitions
        durables = {
            p: await ensure_durable(js, ns, classifier_partition_consumer(p)) for p in owned
        }
        drains = {p: await ensure_drain_durable(js, ns, p) for p in owned}
        store = StreamConfigStore(await js.key_value(ns.bucket(STREAM_CONFIGS_BUCKET)))
        await store.start(settings.config_load_timeout_seconds)
        rollouts = RolloutFollower(await js.key_value(ns.bucket(ROLLOUTS_BUCKET)))
        await rollouts.start(settings.config_load_timeout_seconds)
        states = {p: ClassifierState(settings.max_streams_per_source) for p in owned}
        state_bucket = ns.bucket(CLASSIFIER_STATE_BUCKET)
        kv = await js.key_value(state_bucket)
        follower = StateFollower(
            kv, lambda domain, source_id: states.get(partition_of(domain, source_id, count))
        )
        await follower.start(settings.state_load_timeout_seconds)
        outbox = CoalescingOutbox(JetStreamOutbox(js, settings.publish_timeout_seconds))
        partitions = [
            Partition(
                p,
                states[p],
                RawBatchHandler(
                    ns,
                    rollouts.resolver(store.resolve),
                    outbox,
                    states[p],
                    partition=p,
                    partitions=count,
                    rollouts=rollouts,
                    live_resolve=store.resolve,
                    retry_delay=settings.publish_retry_seconds,
                    max_retry_delay=settings.publish_retry_max_seconds,
                ),
                PartitionCheckpoint(
                    p,
                    states[p],
                    outbox,
                    state_bucket,
                    max_inputs=settings.checkpoint_max_inputs,
                    retry_delay=settings.publish_retry_seconds,
                    max_retry_delay=settings.publish_retry_max_seconds,
                ),
            )
            for p in owned
        ]
        if follower.legacy_events:  # held by former checkpoints as not yet acked
            events_stream = ns.stream(DP_EVENTS)
            await publish_until_acked(
                outbox.publish_all,
                [
                    Outgoing(e.subject, e.payload, {MSG_ID_HEADER: e.msg_id}, events_stream)
                    for e in follower.legacy_events.values()
                ],
                retry_delay=settings.publish_retry_seconds,
                max_delay=settings.publish_retry_max_seconds,
            )
        for partition in partitions:  # what the load brought in beyond the caps
            await evict_idle(partition, settings, len(partitions))
        loader = StateLoader(kv)
        stopping = asyncio.Event()

        def pull(partition: Partition, durable: str, timeout: float, size: int, **kw: bool) -> Any:
            return consume(
                js,
                ns.stream(DP_RAW),
                durable,
                partition.handler,
                partition.checkpoint,
                stopping,
                loader=loader,
                batch_size=size,
                fetch_timeout=timeout,
                max_inflight=settings.max_inflight_fetches,
                **kw,
            )

        async def run_partition(partition: Partition) -> None:
            # The former subjects' backlog first: a stream's older points before its newer
            # ones. Then both (former gateways may still publish during a rolling upgrade).
            drain = (
                drains[partition.number],
                settings.drain_fetch_timeout_seconds,
                settings.drain_fetch_batch_size,
            )
            await pull(partition, *drain, until_idle=True)
            await asyncio.gather(
                pull(
                    partition,
                    durables[partition.number],
                    settings.fetch_timeout_seconds,
                    settings.fetch_batch_size,
                ),
                pull(partition, *drain),
            )

        consumers = [
            asyncio.create_task(run_partition(p), name=f"classifier-partition-{p.number}")
            for p in partitions
        ]
        background = asyncio.Event()
        loops = []
        for partition in partitions:
            loops += [
                asyncio.create_task(
                    partition.checkpoint.run(settings.checkpoint_interval_seconds, background),
                    name=f"classifier-snapshot-{partition.number}",
                ),
                asyncio.create_task(
                    every(
                        settings.staleness_check_interval_seconds,
                        background,
                        "staleness check",
                        functools.partial(
                            check_staleness, partition, settings.staleness_max_events
                        ),
                    ),
                    name=f"classifier-staleness-{partition.number}",
                ),
                asyncio.create_task(
                    every(
                        settings.eviction_interval_seconds,
                        background,
                        "eviction",
                        functools.partial(evict_idle, partition, settings, len(partitions)),
                    ),
                    name=f"classifier-eviction-{partition.number}",
                ),
            ]
        app.state.partitions = partitions
        app.state.store = store
        log.info(
            "classifier started",
            configs=len(store),
            streams=sum(len(s) for s in states.values()),
            partitions=owned,
            of=count,
            replica=f"{settings.classifier_replica} of {settings.classifier_replicas}",
        )
        try:
            yield
        finally:
            stopping.set()  # no more fetches; the publishes in flight finish
            background.set()
            await asyncio.wait(consumers, timeout=10)
            for partition in partitions:  # the bus is down: what is unacked comes back
                partition.handler.stopping.set()
            await asyncio.gather(*consumers, *loops, return_exceptions=True)
            for partition in partitions:  # a clean stop acks what it classified
                with contextlib.suppress(Exception):
                    await asyncio.wait_for(partition.checkpoint.snapshot(stopping), 10)
            await store.stop()
            await rollouts.stop()
            await follower.stop()
            with contextlib.suppress(Exception):
                await nc.drain()
            log.info("classifier stopped")

    return Starlette(routes=ops_routes(ready_check), lifespan=lifespan)
