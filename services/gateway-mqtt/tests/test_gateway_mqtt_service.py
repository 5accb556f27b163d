"""The gateway against the real local Mosquitto and NATS: messages in, PointBatches and
RejectedInputs out on the test's namespaced streams, PUBACKs only after JetStream."""

from __future__ import annotations

import asyncio
import math
from datetime import UTC, datetime
from typing import Any

import httpx
import orjson
import pytest
from nats.js import JetStreamContext

from tributary_contracts import (
    DEFAULT_PARTITIONS,
    MSG_ID_HEADER,
    LegacyIds,
    RejectedInput,
    ensure_jetstream,
    partition_of,
)

pytestmark = pytest.mark.integration

T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)


@pytest.fixture(autouse=True)
def _helpers(mq: Any) -> None:
    global publish, mosquitto_pub, wait_for_messages, batches
    publish, mosquitto_pub, wait_for_messages = mq.publish, mq.mosquitto_pub, mq.wait_for_messages
    batches = mq.batches


publish: Any
mosquitto_pub: Any
wait_for_messages: Any
batches: Any


async def test_the_seed_examples_become_point_batches(gateway: Any) -> None:
    before = datetime.now(UTC)
    await mosquitto_pub(
        gateway.topic("infrastructure/server-01/cpu_usage/data"),
        '{"value": 45.2, "timestamp": "2026-02-25T21:00:00Z"}',
    )
    await mosquitto_pub(gateway.topic("finance/trading-system/latency_ms/data"), '{"value": 12.5}')

    stored = await gateway.raw(2)
    by_source = {b.source_id: b for b in batches(stored)}
    assert sorted(by_source) == ["server-01", "trading-system"]
    cpu, latency = by_source["server-01"], by_source["trading-system"]
    assert (cpu.domain, cpu.transport, [(p.stream_id, p.value, p.ts) for p in cpu.points]) == (
        "infrastructure",
        "mqtt",
        [("cpu_usage", 45.2, T0)],
    )
    assert latency.domain == "finance"
    assert [(p.stream_id, p.value) for p in latency.points] == [("latency_ms", 12.5)]
    assert before <= latency.points[0].ts <= datetime.now(UTC)  # receive time
    assert {m.subject for m in stored} == {
        gateway.ns.raw_partition_subject(
            "infrastructure", partition_of("infrastructure", "server-01", DEFAULT_PARTITIONS)
        ),
        gateway.ns.raw_partition_subject(
            "finance", partition_of("finance", "trading-system", DEFAULT_PARTITIONS)
        ),
    }
    assert all(m.headers.get(MSG_ID_HEADER) for m in stored)


async def test_the_legacy_topic_becomes_an_iot_point_of_sensor_source(gateway: Any) -> None:
    await mosquitto_pub(
        gateway.topic("iot/sensors/17/readings"), '{"value": 21.5, "timestamp": 1772053200}'
    )

    [batch] = batches(await gateway.raw(1))
    assert (batch.domain, batch.source_id) == ("iot", "sensor-17")
    [point] = batch.points
    assert (point.stream_id, point.value, point.ts, point.legacy) == (
        "17",
        21.5,
        T0,
        LegacyIds(sensor_id=17),
    )


async def test_many_messages_are_micro_batched_per_source(gateway: Any) -> None:
    messages = [
        (gateway.topic(f"infrastructure/host-{i % 3}/load/data"), orjson.dumps(
            {"value": i, "timestamp": 1772053200 + i}
        ))
        for i in range(300)
    ]  # fmt: skip
    await publish(messages)

    stored = await gateway.raw(3)
    await asyncio.sleep(0.3)
    stored = await gateway.raw(0)
    points = {(b.source_id, p.value) for b in batches(stored) for p in b.points}
    assert points == {(f"host-{i % 3}", float(i)) for i in range(300)}
    assert len(stored) < 300  # batched, not one message per point


BAD_INPUT = [
    ("infrastructure/s1/cpu/data", b"not json", "json"),
    ("infrastructure/s1/cpu/data", b'{"temperature": 3}', "value"),
    ("infrastructure/s1/cpu/data", b'{"value": "high"}', "value"),
    ("infrastructure/s1/cpu/data", b'{"value": NaN}', "value"),
    ("infrastructure/s1//data", b'{"value": 1}', "topic"),
    (
        "infrastructure/s1/cpu/data",
        b'{"value": 1, "pad": "' + b"x" * 70_000 + b'"}',
        "payload_size",
    ),
    ("iot/s1/cpu/data", b'{"value": 1}', "iot_domain"),
    ("iot/sensors/abc/readings", b'{"value": 1}', "sensor_id"),
]


async def test_every_kind_of_bad_input_is_rejected_and_the_service_keeps_running(
    gateway: Any,
) -> None:
    await publish([(gateway.topic(t), p) for t, p, _ in BAD_INPUT])
    await mosquitto_pub(gateway.topic("infrastructure/s1/cpu/data"), '{"value": 1.5}')

    rejected = [RejectedInput.model_validate_json(m.data) for m in await gateway.rejected(8)]
    [good] = batches(await gateway.raw(1))

    assert good.points[0].value == 1.5
    assert len(rejected) == len(BAD_INPUT)
    for message, (topic, payload, _) in zip(rejected, BAD_INPUT, strict=True):
        [entry] = message.rejected
        assert message.transport == "mqtt"
        assert entry.topic == gateway.topic(topic)
        assert entry.reason and "[topic" not in entry.reason
        assert entry.excerpt == payload[:512].decode()
    transport = httpx.ASGITransport(app=gateway.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        metrics = (await client.get("/metrics")).text
    for code in {c for _, _, c in BAD_INPUT}:
        assert f'gateway_mqtt_messages_rejected_total{{reason="{code}"}}' in metrics


async def test_an_unknown_topic_shape_is_rejected_when_subscribed(start_gateway: Any) -> None:
    async with start_gateway(mqtt_topics="#") as gateway:
        await publish([(gateway.topic("weather/station-1"), b'{"value": 1}')])

        [message] = await gateway.rejected(1)
        entry = RejectedInput.model_validate_json(message.data).rejected[0]
        assert "is neither <domain>/<source_id>/<stream_id>/data" in entry.reason


async def test_nothing_is_acked_while_jetstream_is_unavailable_and_all_arrives_after(
    gateway: Any, jetstream: JetStreamContext
) -> None:
    raw = gateway.ns.stream("DP_RAW")
    await jetstream.delete_stream(raw)
    await publish([(gateway.topic("infrastructure/outage/cpu/data"), orjson.dumps(
        {"value": i, "timestamp": 1772053200 + i})) for i in range(20)])  # fmt: skip
    await asyncio.sleep(0.5)
    transport = httpx.ASGITransport(app=gateway.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        metrics = (await client.get("/metrics")).text
    in_flight = next(
        float(line.split()[1])
        for line in metrics.splitlines()
        if line.startswith("gateway_mqtt_in_flight ")
    )
    assert in_flight == 20  # received, none acked

    await ensure_jetstream(jetstream, gateway.ns)
    stored = await gateway.raw(20)  # each message retries on its own backoff (≤ 2 s)
    await asyncio.sleep(0.5)  # room for any duplicate to show up
    stored = await wait_for_messages(jetstream, raw, 0)
    assert sorted(p.value for b in batches(stored) for p in b.points) == [
        float(i) for i in range(20)
    ]


async def test_a_crash_after_the_pubAck_but_before_the_puback_stores_the_point_once(
    start_gateway: Any, jetstream: JetStreamContext
) -> None:
    """The connection dies right after JetStream acked (no PUBACK sent): the broker redelivers
    over the next connection and the gateway republishes it. When the redelivered messages form
    the same bundle, its Nats-Msg-Id makes JetStream drop the copy; when they are bundled
    differently, the copy reaches the raw stream but carries the same (stream, timestamp) key, so
    the writer's ON CONFLICT stores it once. The timestamp-less message keeps its first receive
    time for exactly that reason."""
    from gateway_mqtt import app as app_module

    crashed: list[str] = []
    original = app_module.coalescer

    class CrashingJetStream:
        """Aborts the broker connection as soon as the first raw bundle is acked."""

        def __init__(self, js: Any) -> None:
            self._js = js

        async def publish_async(self, subject: str, payload: bytes, **kwargs: Any) -> Any:
            ack = await self._js.publish_async(subject, payload, **kwargs)
            if ".raw." in subject:
                ack.add_done_callback(lambda _: crash(subject))
            return ack

    def crash(subject: str) -> None:
        if not crashed:
            crashed.append(subject)
            supervisor.connection.abort()  # like a crash: no PUBACK, no DISCONNECT

    def crashing_coalescer(js: Any, *args: Any, **kwargs: Any) -> Any:
        return original(CrashingJetStream(js), *args, **kwargs)

    app_module.coalescer = crashing_coalescer  # type: ignore[assignment]
    try:
        async with start_gateway() as gateway:
            supervisor = _supervisor_of(gateway)
            topic = gateway.topic("infrastructure/crash/cpu/data")
            stamped, unstamped = b'{"value": 1, "timestamp": 1772053200}', b'{"value": 2}'
            await publish([(topic, stamped), (topic, unstamped)])
            await asyncio.sleep(1.5)  # reconnect, redelivery, republish
            stored = await gateway.raw(1)
            transport = httpx.ASGITransport(app=gateway.app)
            async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
                metrics = (await client.get("/metrics")).text
    finally:
        app_module.coalescer = original  # type: ignore[assignment]

    assert crashed
    assert "gateway_mqtt_redeliveries_total 0.0" not in metrics
    copies: dict[tuple[str, Any], set[float]] = {}
    for point in (p for b in batches(stored) for p in b.points):
        copies.setdefault((point.stream_id, point.ts), set()).add(point.value)
    assert sorted(v for values in copies.values() for v in values) == [1.0, 2.0]


def _supervisor_of(gateway: Any) -> Any:
    """The running app's MQTT supervisor."""
    supervisor = gateway.app.state.supervisor
    assert supervisor is not None and supervisor.connected
    return supervisor


async def test_shared_subscription_splits_messages_between_two_replicas(
    start_gateway: Any, topic_prefix: str
) -> None:
    group = topic_prefix.replace("-", "")
    async with (
        start_gateway(mqtt_shared_group=group, mqtt_client_id=f"{topic_prefix}-a") as first,
        start_gateway(mqtt_shared_group=group, mqtt_client_id=f"{topic_prefix}-b"),
    ):
        await publish([(first.topic(f"infrastructure/h{i}/cpu/data"), orjson.dumps(
            {"value": i, "timestamp": 1772053200})) for i in range(40)])  # fmt: skip
        stored = await first.raw(40)
        await asyncio.sleep(0.3)
        stored = await first.raw(0)

    values = sorted(p.value for b in batches(stored) for p in b.points)
    assert values == [float(i) for i in range(40)]  # each message once, whichever replica


async def test_ready_reports_broker_and_bus(gateway: Any) -> None:
    transport = httpx.ASGITransport(app=gateway.app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        reply = await client.get("/ready")
        health = await client.get("/health")

    assert reply.status_code == 200
    assert reply.json() == {"ready": True, "checks": {"mqtt": True, "nats": True, "stream": True}}
    assert health.status_code == 200
    assert not math.isnan(0.0)
