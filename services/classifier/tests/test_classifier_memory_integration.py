"""Bounded classifier memory against the real local NATS (issue 21, finding 7): a source that
invents stream ids cannot grow the state past ``MAX_STREAMS_PER_SOURCE``, and an idle source
leaves memory and comes back from its checkpoint with its run of violations intact."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.js import JetStreamContext
from prometheus_client import REGISTRY

from classifier.app import create_app
from classifier.settings import ClassifierSettings
from tributary_contracts import (
    DP_CLASSIFIED,
    DP_EVENTS,
    DP_RAW,
    STREAM_CONFIGS_BUCKET,
    AlertEvent,
    ClassifiedBundle,
    DataPoint,
    Namespace,
    PointBatch,
    PointBundle,
    StreamConfig,
    ValueConstraints,
    classifier_partition_durable,
    stream_config_key,
)

pytestmark = pytest.mark.integration

T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)
CONFIG = StreamConfig(
    value_constraints=ValueConstraints(warning_max=30), consecutive_violations_required=3
)


async def until(check: Callable[[], Awaitable[bool]], what: str, within: float = 20.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


def metric(name: str) -> float:
    return REGISTRY.get_sample_value(name) or 0.0


async def publish(js: JetStreamContext, ns: Namespace, source: str, values: dict[str, Any]) -> None:
    """One bundle of one batch: ``values`` maps stream id → (second, value)."""
    points = [
        DataPoint(stream_id=sid, value=v, ts=T0 + timedelta(seconds=s))
        for sid, (s, v) in values.items()
    ]
    batch = PointBatch(
        domain="iot", source_id=source, transport="mqtt", received_at=T0, points=points
    )
    bundle = PointBundle(domain="iot", partition=0, batches=[batch])
    await js.publish(ns.raw_partition_subject("iot", 0), bundle.model_dump_json().encode())


async def test_stream_cap_and_idle_eviction_bound_the_state_and_keep_its_meaning(
    servers: Any, bus_prefix: str, jetstream: JetStreamContext
) -> None:
    ns, js = Namespace(bus_prefix), jetstream
    settings = ClassifierSettings(
        nats_url=servers.nats_url,
        bus_prefix=bus_prefix,
        bus_partitions=1,
        fetch_timeout_seconds=0.05,
        checkpoint_interval_seconds=0.1,
        max_streams_per_source=50,
        state_idle_seconds=0.5,
        eviction_interval_seconds=0.1,
    )
    app = create_app(settings)
    evicted_before = metric("classifier_evicted_streams_total")
    restored_before = metric("classifier_restored_sources_total")
    async with app.router.lifespan_context(app):
        kv = await js.key_value(ns.bucket(STREAM_CONFIGS_BUCKET))
        await kv.put(stream_config_key("iot", "*", "*"), CONFIG.model_dump_json().encode())
        await until(
            lambda: _true(app.state.store.resolve("iot", "x", "y") is not None), "the config"
        )
        [partition] = app.state.partitions
        state = partition.state

        # a source that invents 400 stream ids: 50 get state, every point is still classified
        for first in range(0, 400, 100):
            await publish(
                js, ns, "invented", {f"id-{i}": (0, 1.0) for i in range(first, first + 100)}
            )
        # a device with two violations of a run of three, then silence
        await publish(js, ns, "device", {"temp": (0, 35.0)})
        await publish(js, ns, "device", {"temp": (1, 36.0)})

        async def acked() -> bool:
            info = await js.consumer_info(ns.stream(DP_RAW), classifier_partition_durable(0))
            return not (info.num_pending or info.num_ack_pending)

        await until(acked, "the inputs acked")
        invented = sum(1 for key in state.streams if key[1] == "invented")
        assert invented <= 50
        assert metric("classifier_over_cap_points_total") >= 350

        # both sources fall silent: they leave memory, their state stays in the bucket
        await until(lambda: _true(not state.streams), "the idle sources to be evicted", within=10)
        assert metric("classifier_evicted_streams_total") - evicted_before >= 51
        assert ("iot", "device") in state.on_disk

        # the device speaks again: restored from its checkpoint, the run goes on to 3
        await publish(js, ns, "device", {"temp": (2, 37.0)})

        async def opened() -> bool:
            return bool((await js.stream_info(ns.stream(DP_EVENTS))).state.messages)

        await until(opened, "the alert to open")
        assert metric("classifier_restored_sources_total") - restored_before >= 1
        event = AlertEvent.model_validate_json((await js.get_msg(ns.stream(DP_EVENTS), 1)).data)

    assert (str(event.event), event.violation_count, event.first_value) == ("opened", 3, 35.0)
    classified = ns.stream(DP_CLASSIFIED)
    count = (await js.stream_info(classified)).state.messages
    points = [
        p
        for seq in range(1, count + 1)
        for b in ClassifiedBundle.model_validate_json(
            (await js.get_msg(classified, seq)).data
        ).batches
        if b.source_id == "invented"
        for p in b.points
    ]
    assert len(points) == 400  # over the cap: stored all the same, judged by value rules
    assert sum(p.reason.startswith("stream limit of the source reached") for p in points) == 350


async def _true(value: bool) -> bool:
    return value
