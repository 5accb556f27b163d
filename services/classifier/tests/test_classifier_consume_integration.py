"""The pull loop (``classifier.consume``) against the real local NATS, on this test's namespace.

Fetches are pipelined: the next fetch is classified while earlier ones wait for their publish
acks. The per-stream state must still see every point in delivery order, every message must be
classified once and acked, and a stop must let the fetches in flight finish.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.js import JetStreamContext

from classifier.checkpoint import PartitionCheckpoint
from classifier.classify import ClassifierState
from classifier.config_store import StreamConfigStore
from classifier.consume import consume
from classifier.consumers import ensure_durable
from classifier.handler import RawBatchHandler
from classifier.outbox import CoalescingOutbox, JetStreamOutbox
from tributary_contracts import (
    CLASSIFIER_STATE_BUCKET,
    DP_CLASSIFIED,
    DP_RAW,
    ClassifiedBundle,
    DataPoint,
    Namespace,
    PointBatch,
    PointBundle,
    StreamConfig,
    classifier_partition_consumer,
    ensure_jetstream,
    stream_config_key,
)
from tributary_runtime.publish import Outgoing, Published

pytestmark = pytest.mark.integration

T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)
MESSAGES = 40


class SlowOutbox:
    """The real JetStream outbox, 20 ms slower per group: fetches overlap. Records the most
    groups waiting at once."""

    def __init__(self, inner: JetStreamOutbox) -> None:
        self.inner = inner
        self.waiting = 0
        self.most_waiting = 0

    async def publish_all(self, messages: Sequence[Outgoing]) -> Published:
        self.waiting += 1
        self.most_waiting = max(self.most_waiting, self.waiting)
        try:
            await asyncio.sleep(0.02)
            return await self.inner.publish_all(messages)
        finally:
            self.waiting -= 1

    async def publish(self, message: Outgoing) -> None:
        await self.inner.publish(message)


async def test_pipelined_fetches_classify_every_message_once_in_delivery_order(
    servers: Any, bus_prefix: str, jetstream: JetStreamContext
) -> None:
    ns, js = Namespace(bus_prefix), jetstream
    await ensure_jetstream(js, ns)
    durable = await ensure_durable(js, ns, classifier_partition_consumer(0))
    store = StreamConfigStore(defaults={})
    config = StreamConfig.model_validate({"rate_constraints": {"abs_delta": 5}})
    store.apply(stream_config_key("iot", "*", "temp"), config.model_dump_json().encode(), 1, None)
    # one point per message, alternating 20 / 30: every point after the first breaks the delta
    # limit against the previous one, which only holds if the state saw them in order
    for i in range(MESSAGES):
        batch = PointBatch(
            domain="iot",
            source_id="dev-1",
            transport="http",
            received_at=T0,
            points=[
                DataPoint(stream_id="temp", value=20 + 10 * (i % 2), ts=T0 + timedelta(seconds=i))
            ],
        )
        bundle = PointBundle(domain="iot", partition=0, batches=[batch])
        await js.publish(ns.raw_partition_subject("iot", 0), bundle.model_dump_json().encode())

    slow = SlowOutbox(JetStreamOutbox(js, 5.0))
    outbox = CoalescingOutbox(slow)
    state = ClassifierState()
    handler = RawBatchHandler(ns, store.resolve, outbox, state)
    checkpoint = PartitionCheckpoint(0, state, outbox, ns.bucket(CLASSIFIER_STATE_BUCKET))
    stopping = asyncio.Event()
    snapshots = asyncio.create_task(checkpoint.run(0.05, stopping))
    loop = asyncio.create_task(
        consume(
            js,
            ns.stream(DP_RAW),
            durable,
            handler,
            checkpoint,
            stopping,
            batch_size=3,
            fetch_timeout=0.05,
            max_inflight=4,
        )
    )
    deadline = asyncio.get_running_loop().time() + 20
    while (await js.stream_info(ns.stream(DP_CLASSIFIED))).state.messages < MESSAGES:
        assert asyncio.get_running_loop().time() < deadline, "not every message was classified"
        await asyncio.sleep(0.05)
    stopping.set()
    await asyncio.wait_for(loop, 10)  # waits for the fetches in flight
    await asyncio.wait_for(snapshots, 10)
    await checkpoint.snapshot()  # a clean stop: everything classified is acked

    info = await js.consumer_info(ns.stream(DP_RAW), durable)
    while info.num_ack_pending:  # the acks are on their way to the server
        assert asyncio.get_running_loop().time() < deadline, "not every message was acked"
        await asyncio.sleep(0.05)
        info = await js.consumer_info(ns.stream(DP_RAW), durable)
    assert (info.num_pending, info.num_ack_pending, info.num_redelivered) == (0, 0, 0)
    out = [
        ClassifiedBundle.model_validate_json((await js.get_msg(ns.stream(DP_CLASSIFIED), s)).data)
        for s in range(1, MESSAGES + 1)
    ]
    points = sorted((p.ts, p.rule, str(b.cls)) for x in out for b in x.batches for p in b.points)
    assert points == [(T0, "none", "normal")] + [
        (T0 + timedelta(seconds=i), "rate_abs_delta", "anomaly") for i in range(1, MESSAGES)
    ]
    # fetches did overlap, never more than max_inflight (plus one snapshot writing documents)
    assert 1 < slow.most_waiting <= 4 + 1
