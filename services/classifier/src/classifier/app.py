"""Wiring: the FastStream broker with its pull subscriber, the config watch, the ops app."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from typing import Any

import structlog
from faststream import AckPolicy
from faststream.message import StreamMessage
from faststream.nats import JStream, NatsBroker, PullSub
from starlette.applications import Starlette

from classifier.checkpoint import Checkpointer, StateFollower
from classifier.config_store import StreamConfigStore
from classifier.handler import CoalescingOutbox, JetStreamOutbox, RawBatchHandler
from classifier.settings import ClassifierSettings
from classifier.state import ClassifierState
from tributary_contracts import (
    CLASSIFIER_DURABLE,
    CLASSIFIER_STATE_BUCKET,
    DP_RAW,
    STREAM_CONFIGS_BUCKET,
    ensure_consumer,
    ensure_jetstream,
)
from tributary_runtime.ops import ops_routes

log = structlog.get_logger(__name__)

SERVICE_NAME = "tributary-classifier"


def build_broker(settings: ClassifierSettings) -> NatsBroker:
    """An unconnected broker with the same reconnect policy as every service."""
    return NatsBroker(
        [s.strip() for s in settings.nats_url.split(",")],
        name=SERVICE_NAME,
        connect_timeout=5,
        max_reconnect_attempts=-1,
        reconnect_time_wait=1,
        logger=None,
    )


async def _raw_message(message: StreamMessage[Any]) -> Any:
    """The nats-py ``Msg`` itself as the handler's argument: the handler parses each message.

    FastStream would otherwise JSON-decode the batch, and a ``Context("message")`` argument
    would cost a worker-thread round trip per message (FastDepends resolves it synchronously).
    """
    return message.raw_message


def subscribe_classifier(
    broker: NatsBroker, settings: ClassifierSettings, handler: RawBatchHandler
) -> None:
    """Register the durable pull subscriber on ``dp.raw.>`` that feeds ``handler``.

    One ``fetch`` of up to ``fetch_batch_size`` messages per round; FastStream runs the handler
    for each fetched message concurrently and fetches again when all are done. Not
    ``PullSub(batch=True)``: its loop refills a batch with several fetches per deadline, and with
    nats-py 2.16 that strands messages in the client until ``ack_wait`` redelivers them (measured
    19 of 60 messages at a 50 ms timeout; see the README).
    """
    ns = settings.namespace

    @broker.subscriber(
        ns.all_raw(),
        stream=JStream(ns.stream(DP_RAW), declare=False),
        durable=CLASSIFIER_DURABLE,
        pull_sub=PullSub(
            batch_size=settings.fetch_batch_size, timeout=settings.fetch_timeout_seconds
        ),
        # Acks, naks and dead letters are decided per message by the handler.
        ack_policy=AckPolicy.MANUAL,
        decoder=_raw_message,
        no_reply=True,
    )
    async def classify_raw(msg: Any) -> None:
        """Consumes ``dp.raw.>``; produces ``dp.classified.>`` and ``dp.dlq.classifier``."""
        await handler.handle([msg])


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
    broker = build_broker(settings)
    store: StreamConfigStore | None = None
    follower: StateFollower | None = None

    async def ready_check() -> dict[str, bool]:
        return {
            "nats": await broker.ping(timeout=0.5),
            "stream_configs": store is not None and store.loaded.is_set(),
            "classifier_state": follower is not None and follower.loaded.is_set(),
        }

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        nonlocal store, follower
        nc = await broker.connect()
        js = nc.jetstream()
        await ensure_jetstream(js, ns)
        await ensure_consumer(js, ns, CLASSIFIER_DURABLE)
        store = StreamConfigStore(await js.key_value(ns.bucket(STREAM_CONFIGS_BUCKET)))
        await store.start(settings.config_load_timeout_seconds)
        state = ClassifierState()
        state_bucket = ns.bucket(CLASSIFIER_STATE_BUCKET)
        follower = StateFollower(await js.key_value(state_bucket), state)
        await follower.start(settings.state_load_timeout_seconds)
        outbox = CoalescingOutbox(JetStreamOutbox(js, settings.publish_timeout_seconds))
        checkpointer = Checkpointer(outbox, state, state_bucket)
        handler = RawBatchHandler(
            ns,
            store.resolve,
            outbox,
            state,
            checkpointer=checkpointer,
            nak_delay=settings.nak_delay_seconds,
            nak_max_delay=settings.nak_max_delay_seconds,
        )
        subscribe_classifier(broker, settings, handler)
        await broker.start()
        loops = [
            asyncio.create_task(check_staleness_forever(handler, settings), name="staleness"),
            asyncio.create_task(
                flush_checkpoints_forever(checkpointer, settings), name="checkpoint-flush"
            ),
        ]
        app.state.handler = handler
        app.state.store = store
        app.state.state = state
        log.info("classifier started", configs=len(store), streams=len(state), subject=ns.all_raw())
        try:
            yield
        finally:
            for loop in loops:
                loop.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await loop
            await store.stop()
            await broker.stop()  # stops fetching, lets the batch in hand finish, drains
            with contextlib.suppress(Exception):  # a clean stop leaves nothing to catch up
                await asyncio.wait_for(checkpointer.flush_dirty(limit=1_000_000), 10)
            await follower.stop()
            log.info("classifier stopped")

    return Starlette(routes=ops_routes(ready_check), lifespan=lifespan)
