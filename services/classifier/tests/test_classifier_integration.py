"""The classifier running inline against the real local NATS, on this test's namespace.

Each test starts the service with ``create_app`` (lifespan run), writes StreamConfigs to the
namespaced ``stream-configs`` bucket, publishes PointBatches on ``dp.raw.>`` and reads what
landed in the namespaced DP_CLASSIFIED / DP_DLQ streams. Every wait is bounded.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from nats.aio.msg import Msg
from nats.js import JetStreamContext
from prometheus_client import REGISTRY
from starlette.applications import Starlette

from classifier.app import create_app
from classifier.settings import ClassifierSettings
from tributary_contracts import (
    DLQ_CONSUMER,
    DLQ_DELIVERIES,
    DLQ_KIND,
    DLQ_REASON,
    DLQ_SUBJECT,
    DP_CLASSIFIED,
    DP_DLQ,
    DP_RAW,
    MAX_DELIVER,
    MSG_ID_HEADER,
    STREAM_CONFIGS_BUCKET,
    ClassifiedBatch,
    ClassifiedBundle,
    DataPoint,
    Namespace,
    PointBatch,
    PointBundle,
    PointClass,
    StreamConfig,
    ValueConstraints,
    batch_msg_id,
    bundle_msg_id,
    classifier_partition_consumer,
    classifier_partition_durable,
    stream_config_key,
)

pytestmark = pytest.mark.integration

NOT_A_BUNDLE = (
    b'{"domain": "iot", "partition": 0, "batches": [{"domain": "iot", "source_id": "d"}]}'
)

T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)
TEMPERATURE = StreamConfig(
    stream_type="temperature",
    value_constraints=ValueConstraints(
        min_value=-40, max_value=125, alert_max=60, operational_max=50, warning_max=30
    ),
)


@dataclass
class Running:
    app: Starlette
    ns: Namespace
    js: JetStreamContext
    settings: ClassifierSettings

    async def put_config(self, source_id: str, stream_id: str, config: StreamConfig | bytes) -> int:
        kv = await self.js.key_value(self.ns.bucket(STREAM_CONFIGS_BUCKET))
        payload = config if isinstance(config, bytes) else config.model_dump_json().encode()
        return int(await kv.put(stream_config_key("iot", source_id, stream_id), payload))

    async def publish_raw(self, payload: bytes | PointBatch) -> None:
        """``payload`` (a batch: as a bundle of one batch) on partition 0's subject."""
        if isinstance(payload, PointBatch):
            bundle = PointBundle(domain=payload.domain, partition=0, batches=[payload])
            payload = bundle.model_dump_json().encode()
        await self.js.publish(self.ns.raw_partition_subject("iot", 0), payload)

    async def wait_for_version(self, source_id: str, stream_id: str, revision: int) -> None:
        store = self.app.state.store

        def applied() -> bool:
            config = store.resolve("iot", source_id, stream_id)
            return config is not None and config.version == revision

        await eventually(applied)

    async def consumer(self) -> Any:
        return await self.js.consumer_info(self.ns.stream(DP_RAW), classifier_partition_durable(0))

    async def wait_input_acked(self) -> None:
        async def done() -> bool:
            info = await self.consumer()
            return bool(info.num_ack_pending == 0 and info.num_pending == 0)

        await eventually_async(done)


async def eventually(check: Callable[[], bool], within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not check():
        if loop.time() > deadline:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(0.02)


async def eventually_async(check: Callable[[], Awaitable[bool]], within: float = 10.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"condition not met within {within} s")
        await asyncio.sleep(0.05)


async def read_stream(
    js: JetStreamContext, stream: str, count: int, within: float = 10.0
) -> list[Msg]:
    """The first ``count`` messages of ``stream`` (fails when fewer arrive in time)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while True:
        info = await js.stream_info(stream)
        if info.state.messages >= count:
            break
        if loop.time() > deadline:
            pytest.fail(f"{stream} holds {info.state.messages} messages, expected {count}")
        await asyncio.sleep(0.05)
    return [await js.get_msg(stream, seq) for seq in range(1, count + 1)]  # type: ignore[misc]


async def stream_size(js: JetStreamContext, stream: str) -> int:
    return int((await js.stream_info(stream)).state.messages)


def classified(msgs: list[Msg]) -> list[ClassifiedBatch]:
    """The batch of each ClassifiedBundle (the tests publish one source per bundle)."""
    bundles = [ClassifiedBundle.model_validate_json(m.data) for m in msgs]
    assert all(len(b.batches) == 1 and b.partition == 0 for b in bundles)
    return [b.batches[0] for b in bundles]


def batch_of(
    values: list[float], stream_id: str = "temp", start: datetime = T0, **kw: Any
) -> PointBatch:
    points = [
        DataPoint(stream_id=stream_id, value=v, ts=start + timedelta(seconds=i), **kw)
        for i, v in enumerate(values)
    ]
    return PointBatch(
        domain="iot", source_id="dev-1", transport="http", received_at=T0, points=points
    )


@asynccontextmanager
async def classifier_running(
    servers: Any, bus_prefix: str, js: JetStreamContext, **overrides: Any
) -> AsyncIterator[Running]:
    settings = ClassifierSettings(
        nats_url=servers.nats_url,
        bus_prefix=bus_prefix,
        fetch_timeout_seconds=0.05,
        bus_partitions=1,
        publish_retry_seconds=0.1,
        publish_retry_max_seconds=0.5,
        checkpoint_interval_seconds=0.2,
        **overrides,
    )
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        yield Running(app, Namespace(bus_prefix), js, settings)


async def test_raw_batches_are_classified_onto_their_subjects(
    servers: Any, bus_prefix: str, jetstream: JetStreamContext
) -> None:
    async with classifier_running(servers, bus_prefix, jetstream) as svc:
        revision = await svc.put_config("*", "temp", TEMPERATURE)
        await svc.wait_for_version("dev-1", "temp", revision)
        batch = batch_of([20, 35, 55, 70, 130, 21])
        await svc.publish_raw(batch)

        msgs = await read_stream(svc.js, svc.ns.stream(DP_CLASSIFIED), 3)
        await svc.wait_input_acked()

    ns = svc.ns
    assert [m.subject for m in msgs] == [
        ns.classified_partition_subject("iot", "normal", 0),
        ns.classified_partition_subject("iot", "warning", 0),
        ns.classified_partition_subject("iot", "critical", 0),
    ]
    got = classified(msgs)
    assert [[(p.value, p.rule, p.config_version) for p in b.points] for b in got] == [
        [(20.0, "none", revision), (21.0, "none", revision)],
        [(35.0, "warning_zone", revision), (55.0, "operational_range", revision)],
        [(70.0, "critical_zone", revision), (130.0, "physical_range", revision)],
    ]
    assert [p.reason for p in got[2].points] == [
        "value 70.0 is at or above the alert maximum 60.0",
        "value 130.0 is above the physical maximum 125.0",
    ]
    for m, b in zip(msgs, got, strict=True):
        assert (b.domain, b.source_id, b.received_at) == ("iot", "dev-1", batch.received_at)
        keys = [(p.stream_id, p.ts) for p in b.points]
        assert m.headers is not None
        batch_id = batch_msg_id("iot", "dev-1", keys, str(b.cls))
        assert m.headers[MSG_ID_HEADER] == bundle_msg_id([batch_id])


async def test_a_redelivered_batch_is_deduplicated_on_the_bus(
    servers: Any, bus_prefix: str, jetstream: JetStreamContext
) -> None:
    async with classifier_running(servers, bus_prefix, jetstream) as svc:
        await svc.publish_raw(batch_of([1, 2]))
        await read_stream(svc.js, svc.ns.stream(DP_CLASSIFIED), 1)
        await svc.publish_raw(batch_of([1, 2]))  # a gateway retry past its own dedup
        await svc.publish_raw(batch_of([3], start=T0 + timedelta(hours=1)))
        msgs = await read_stream(svc.js, svc.ns.stream(DP_CLASSIFIED), 2)
        await svc.wait_input_acked()
        assert await stream_size(svc.js, svc.ns.stream(DP_CLASSIFIED)) == 2

    assert [[p.value for p in b.points] for b in classified(msgs)] == [[1.0, 2.0], [3.0]]
    assert [p.reason for p in classified(msgs)[0].points] == [
        "no configuration for this stream"
    ] * 2


async def test_config_change_applies_without_restart(
    servers: Any, bus_prefix: str, jetstream: JetStreamContext
) -> None:
    async with classifier_running(servers, bus_prefix, jetstream) as svc:
        first = await svc.put_config("dev-1", "temp", TEMPERATURE)
        await svc.wait_for_version("dev-1", "temp", first)
        await svc.publish_raw(batch_of([40]))
        await read_stream(svc.js, svc.ns.stream(DP_CLASSIFIED), 1)

        stricter = StreamConfig(value_constraints=ValueConstraints(alert_max=35))
        second = await svc.put_config("dev-1", "temp", stricter)
        await svc.wait_for_version("dev-1", "temp", second)
        await svc.publish_raw(batch_of([40], start=T0 + timedelta(minutes=1)))
        await read_stream(svc.js, svc.ns.stream(DP_CLASSIFIED), 2)

        kv = await svc.js.key_value(svc.ns.bucket(STREAM_CONFIGS_BUCKET))
        await kv.delete(stream_config_key("iot", "dev-1", "temp"))
        await eventually(lambda: svc.app.state.store.resolve("iot", "dev-1", "temp") is None)
        await svc.publish_raw(batch_of([40], start=T0 + timedelta(minutes=2)))
        msgs = await read_stream(svc.js, svc.ns.stream(DP_CLASSIFIED), 3)

    got = [(b.cls, b.points[0].rule, b.points[0].config_version) for b in classified(msgs)]
    assert got == [
        (PointClass.WARNING, "warning_zone", first),
        (PointClass.CRITICAL, "critical_zone", second),
        (PointClass.NORMAL, "none", None),
    ]
    assert (
        classified(msgs)[1].points[0].reason == "value 40.0 is at or above the alert maximum 35.0"
    )


async def test_config_by_stream_type_and_invalid_config_in_the_bucket(
    servers: Any, bus_prefix: str, jetstream: JetStreamContext
) -> None:
    async with classifier_running(servers, bus_prefix, jetstream) as svc:
        await svc.put_config("*", "broken", b"{this is not a config")
        revision = await svc.put_config("*", "temperature", TEMPERATURE)
        await svc.wait_for_version("dev-9", "temperature", revision)
        await svc.publish_raw(batch_of([70], stream_id="probe-3", stream_type="temperature"))
        await svc.publish_raw(batch_of([70], stream_id="broken"))
        msgs = await read_stream(svc.js, svc.ns.stream(DP_CLASSIFIED), 2)
        await svc.wait_input_acked()

    got = {(b.cls, b.points[0].stream_id, b.points[0].config_version) for b in classified(msgs)}
    assert got == {(PointClass.CRITICAL, "probe-3", revision), (PointClass.NORMAL, "broken", None)}


async def test_malformed_raw_message_goes_to_the_dlq_and_its_neighbours_are_classified(
    servers: Any, bus_prefix: str, jetstream: JetStreamContext
) -> None:
    async with classifier_running(servers, bus_prefix, jetstream) as svc:
        await svc.publish_raw(batch_of([10]))
        await svc.publish_raw(b"this is not json")
        await svc.publish_raw(NOT_A_BUNDLE)
        await svc.publish_raw(batch_of([11], start=T0 + timedelta(minutes=1)))

        letters = await read_stream(svc.js, svc.ns.stream(DP_DLQ), 2)
        msgs = await read_stream(svc.js, svc.ns.stream(DP_CLASSIFIED), 2)
        await svc.wait_input_acked()
        info = await svc.consumer()

    # messages are handled concurrently: their outputs may be stored in either order
    assert sorted(b.points[0].value for b in classified(msgs)) == [10.0, 11.0]
    assert [m.subject for m in letters] == [svc.ns.dlq_subject("classifier")] * 2
    # the letters too may be stored in either order; each body is the refused payload, byte for byte
    by_body = {m.data: m.headers or {} for m in letters}
    not_json, not_a_batch = b"this is not json", NOT_A_BUNDLE
    assert set(by_body) == {not_json, not_a_batch}
    for headers in by_body.values():
        assert (headers[DLQ_KIND], headers[DLQ_SUBJECT], headers[DLQ_CONSUMER]) == (
            "invalid_batch",
            svc.ns.raw_partition_subject("iot", 0),
            "classifier",
        )
        assert headers[DLQ_DELIVERIES] == "1"
    assert by_body[not_json][DLQ_REASON].startswith("Invalid JSON")
    assert "batches.0.transport: Field required" in by_body[not_a_batch][DLQ_REASON]
    assert (info.num_ack_pending, info.num_pending, info.num_redelivered) == (0, 0, 0)


async def test_message_delivered_max_deliver_times_goes_to_the_dlq(
    servers: Any, bus_prefix: str, jetstream: JetStreamContext
) -> None:
    from tributary_contracts import ensure_jetstream

    ns = Namespace(bus_prefix)
    await ensure_jetstream(jetstream, ns)
    durable = classifier_partition_consumer(0)
    await jetstream.add_consumer(ns.stream(DP_RAW), **durable.kwargs(ns))
    bundle = PointBundle(domain="iot", partition=0, batches=[batch_of([1])])
    payload = bundle.model_dump_json().encode()
    await jetstream.publish(ns.raw_partition_subject("iot", 0), payload)
    # Earlier deliveries that all failed: taken and nak'ed on the durable MAX_DELIVER - 1 times.
    sub = await jetstream.pull_subscribe_bind(durable.durable, ns.stream(DP_RAW))
    for _ in range(MAX_DELIVER - 1):
        [msg] = await sub.fetch(1, timeout=5)
        await msg.nak()
    await sub.unsubscribe()

    async with classifier_running(servers, bus_prefix, jetstream) as svc:
        [letter] = await read_stream(svc.js, ns.stream(DP_DLQ), 1)
        await svc.wait_input_acked()
        assert await stream_size(svc.js, ns.stream(DP_CLASSIFIED)) == 0

    headers = letter.headers or {}
    assert (headers[DLQ_KIND], headers[DLQ_DELIVERIES]) == ("max_deliver", str(MAX_DELIVER))
    assert headers[DLQ_SUBJECT] == ns.raw_partition_subject("iot", 0)
    assert letter.data == payload  # the original bytes, republishable as is
    assert PointBundle.model_validate_json(letter.data).batches[0].points[0].value == 1.0


async def test_failed_publish_is_retried_until_the_output_is_durable(
    servers: Any, bus_prefix: str, jetstream: JetStreamContext
) -> None:
    from tributary_contracts import ensure_jetstream

    async with classifier_running(servers, bus_prefix, jetstream, publish_timeout_seconds=1) as svc:
        classified_stream = svc.ns.stream(DP_CLASSIFIED)
        await svc.js.delete_stream(classified_stream)  # the next hop is down
        await svc.publish_raw(batch_of([5]))

        def publish_failed() -> bool:
            errors = REGISTRY.get_sample_value(
                "classifier_errors_total",
                {"stage": "publish", "error_type": "NoStreamResponseError"},
            )
            return bool(errors and errors >= 2)

        await eventually(publish_failed)  # retried, the same messages, while the stream is gone
        assert (await svc.consumer()).num_ack_pending == 1  # not acked while undeliverable

        await ensure_jetstream(svc.js, svc.ns)  # the next hop is back
        [msg] = await read_stream(svc.js, classified_stream, 1)
        await svc.wait_input_acked()

    assert [p.value for p in classified([msg])[0].points] == [5.0]


async def test_ops_routes_report_health_readiness_and_metrics(
    servers: Any, bus_prefix: str, jetstream: JetStreamContext
) -> None:
    async with classifier_running(servers, bus_prefix, jetstream) as svc:
        await svc.publish_raw(batch_of([1, 2, 3]))
        await read_stream(svc.js, svc.ns.stream(DP_CLASSIFIED), 1)
        transport = httpx.ASGITransport(app=svc.app)
        async with httpx.AsyncClient(transport=transport, base_url="http://classifier") as client:
            health = await client.get("/health")
            ready = await client.get("/ready")
            metrics = await client.get("/metrics")

    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (
        200,
        {
            "ready": True,
            "checks": {"nats": True, "stream_configs": True, "classifier_state": True},
        },
    )
    for name in (
        "classifier_received_points_total",
        'classifier_published_points_total{cls="normal"}',
        "classifier_batch_seconds_bucket",
    ):
        assert name in metrics.text
