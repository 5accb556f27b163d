"""The pipeline on a fake bus and a fake broker connection: batching, PUBACK order, retries,
abandoning on reconnect, backpressure, rejections and redelivered timestamp-less messages."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from gateway_mqtt.pipeline import Pipeline
from gateway_mqtt.settings import GatewayMqttSettings
from tributary_contracts import MSG_ID_HEADER, PointBatch, RejectedInput


@dataclass
class FakeMessage:
    mid: int
    payload: bytes
    topic: str = "infrastructure/server-01/cpu_usage/data"
    qos: int = 1
    dup: bool = False

    @property
    def _topic(self) -> bytes:
        return self.topic.encode()


@dataclass
class FakeBroker:
    acks: list[int] = field(default_factory=list)
    paused: bool = False

    def ack(self, mid: int) -> None:
        self.acks.append(mid)

    def pause_reading(self) -> None:
        self.paused = True

    def resume_reading(self) -> None:
        self.paused = False


class FakeBus:
    """Records publishes; ``hold`` keeps PubAcks back until released, ``fail`` raises."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, dict[str, str]]] = []
        self.fail = False
        self.hold: dict[str, asyncio.Event] = {}  # subject → released

    async def publish(self, subject: str, payload: bytes, headers: dict[str, str]) -> Any:
        if self.fail:
            raise ConnectionError("bus down")
        if subject in self.hold:
            await self.hold[subject].wait()
        self.published.append((subject, payload, headers))
        return object()

    def batches(self) -> list[PointBatch]:
        return [PointBatch.model_validate_json(p) for s, p, _ in self.published if ".raw." in s]


def settings(**overrides: Any) -> GatewayMqttSettings:
    return GatewayMqttSettings(**{"batch_linger_ms": 5, **overrides})


def value(v: float, ts: str | None = "2026-02-25T21:00:00Z") -> bytes:
    body: dict[str, Any] = {"value": v}
    if ts is not None:
        body["timestamp"] = ts
    return orjson.dumps(body)


async def settle(pipeline: Pipeline, seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)
    await pipeline.drain(1.0)


async def test_points_of_one_source_go_out_in_one_batch_after_the_linger() -> None:
    bus, broker = FakeBus(), FakeBroker()
    pipeline = Pipeline(settings(), bus.publish)
    pipeline.attach(broker)

    for mid in range(1, 4):
        pipeline.handle(FakeMessage(mid, value(mid, f"2026-02-25T21:00:0{mid}Z")))
    assert bus.published == [] and broker.acks == []  # lingering
    await settle(pipeline)

    assert [[p.value for p in b.points] for b in bus.batches()] == [[1.0, 2.0, 3.0]]
    assert broker.acks == [1, 2, 3]
    assert bus.published[0][0] == "dp.raw.infrastructure.server-01"
    assert MSG_ID_HEADER in bus.published[0][2]


async def test_a_full_batch_is_published_without_waiting_for_the_linger() -> None:
    bus, broker = FakeBus(), FakeBroker()
    pipeline = Pipeline(settings(batch_max_points=2, batch_linger_ms=10_000), bus.publish)
    pipeline.attach(broker)

    for mid in range(1, 6):
        pipeline.handle(FakeMessage(mid, value(mid, f"2026-02-25T21:00:0{mid}Z")))
    await asyncio.sleep(0.05)

    assert [len(b.points) for b in bus.batches()] == [2, 2]
    assert broker.acks == [1, 2, 3, 4]  # the fifth lingers
    assert pipeline.in_flight == 1


async def test_sources_are_batched_apart_and_pubacks_keep_receipt_order() -> None:
    bus, broker = FakeBus(), FakeBroker()
    bus.hold["dp.raw.finance.exchange"] = asyncio.Event()
    pipeline = Pipeline(settings(), bus.publish)
    pipeline.attach(broker)

    pipeline.handle(FakeMessage(1, value(1), topic="finance/exchange/price/data"))
    pipeline.handle(FakeMessage(2, value(2)))
    pipeline.handle(FakeMessage(3, value(3), topic="finance/exchange/price/data"))
    await asyncio.sleep(0.05)
    # server-01's batch (message 2) is acked by JetStream, but 1 arrived first: no PUBACK yet.
    assert [b.source_id for b in bus.batches()] == ["server-01"]
    assert broker.acks == []

    bus.hold["dp.raw.finance.exchange"].set()
    await settle(pipeline)
    assert broker.acks == [1, 2, 3]


async def test_nothing_is_acked_while_jetstream_fails_and_all_is_once_it_recovers() -> None:
    bus, broker = FakeBus(), FakeBroker()
    bus.fail = True
    pipeline = Pipeline(settings(), bus.publish)
    pipeline.attach(broker)

    pipeline.handle(FakeMessage(1, value(1)))
    pipeline.handle(FakeMessage(2, b"not json"))
    await asyncio.sleep(0.3)
    assert broker.acks == [] and pipeline.in_flight == 2

    bus.fail = False
    await asyncio.sleep(0.5)  # the retry backoff is at most 2 s; these are early retries
    await settle(pipeline)
    assert broker.acks == [1, 2]
    assert len(bus.batches()) == 1


async def test_reading_pauses_above_max_in_flight_and_resumes_when_acked() -> None:
    bus, broker = FakeBus(), FakeBroker()
    bus.fail = True
    pipeline = Pipeline(settings(max_in_flight=2), bus.publish)
    pipeline.attach(broker)

    for mid in (1, 2):
        pipeline.handle(FakeMessage(mid, value(mid)))
    assert not broker.paused
    pipeline.handle(FakeMessage(3, value(3)))
    assert broker.paused

    bus.fail = False
    await asyncio.sleep(0.5)
    await settle(pipeline)
    assert broker.acks == [1, 2, 3] and not broker.paused


async def test_a_lost_connection_abandons_its_messages_to_the_broker_redelivery() -> None:
    bus, broker = FakeBus(), FakeBroker()
    bus.fail = True
    pipeline = Pipeline(settings(), bus.publish)
    pipeline.attach(broker)
    pipeline.handle(FakeMessage(1, value(1)))
    await asyncio.sleep(0.1)

    pipeline.detach()
    bus.fail = False
    await asyncio.sleep(0.3)
    assert pipeline.in_flight == 0 and broker.acks == []

    again = FakeBroker()
    pipeline.attach(again)
    pipeline.handle(FakeMessage(1, value(1), dup=True))
    await settle(pipeline)
    assert again.acks == [1] and broker.acks == []


async def test_a_redelivered_timestamp_less_message_keeps_its_first_receive_time() -> None:
    bus, broker = FakeBus(), FakeBroker()
    bus.fail = True
    pipeline = Pipeline(settings(), bus.publish)
    pipeline.attach(broker)
    pipeline.handle(FakeMessage(7, value(12.5, ts=None)))
    await asyncio.sleep(0.05)
    pipeline.detach()  # connection lost before JetStream acked
    bus.fail = False

    pipeline.attach(FakeBroker())
    await asyncio.sleep(0.01)
    pipeline.handle(FakeMessage(7, value(12.5, ts=None), dup=True))
    pipeline.handle(FakeMessage(8, value(12.5, ts=None)))  # same payload, another message
    await settle(pipeline)

    points = [p for b in bus.batches() for p in b.points]
    assert len(points) == 2
    assert points[0].ts < points[1].ts  # 7 kept its first receive time; 8 has its own


async def test_a_bad_message_is_published_as_rejected_and_then_acked() -> None:
    bus, broker = FakeBus(), FakeBroker()
    pipeline = Pipeline(settings(), bus.publish)
    pipeline.attach(broker)

    pipeline.handle(FakeMessage(1, b'{"value": "high"}'))
    pipeline.handle(FakeMessage(2, value(1), topic="iot/a/b/data"))
    await settle(pipeline)

    rejected = [RejectedInput.model_validate_json(p) for s, p, _ in bus.published]
    assert [s for s, _, _ in bus.published] == ["dp.rejected.mqtt"] * 2
    assert [r.rejected[0].topic for r in rejected] == [
        "infrastructure/server-01/cpu_usage/data",
        "iot/a/b/data",
    ]
    assert rejected[0].rejected[0].reason == "value must be a number, got a string"
    assert rejected[0].rejected[0].excerpt == '{"value": "high"}'
    assert (rejected[1].domain, rejected[1].source_id) == ("iot", "a")
    assert broker.acks == [1, 2]


async def test_qos0_messages_are_published_and_never_acked() -> None:
    bus, broker = FakeBus(), FakeBroker()
    pipeline = Pipeline(settings(), bus.publish)
    pipeline.attach(broker)

    pipeline.handle(FakeMessage(0, value(1), qos=0))
    await settle(pipeline)

    assert len(bus.batches()) == 1 and broker.acks == [] and pipeline.in_flight == 0


@pytest.mark.parametrize("metadata_bytes", [7000])
async def test_batches_too_large_for_one_message_are_split(metadata_bytes: int) -> None:
    bus, broker = FakeBus(), FakeBroker()
    pipeline = Pipeline(settings(), bus.publish, max_message_bytes=64 * 1024)
    pipeline.attach(broker)

    for mid in range(1, 21):
        body = {
            "value": mid,
            "timestamp": 1772053200 + mid,
            "metadata": {"k": "x" * metadata_bytes},
        }
        pipeline.handle(FakeMessage(mid, orjson.dumps(body)))
    await settle(pipeline)

    batches = bus.batches()
    assert len(batches) > 1
    assert all(len(p) <= 63 * 1024 for _, p, _ in bus.published)
    assert [p.value for b in batches for p in b.points] == [float(i) for i in range(1, 21)]
    assert broker.acks == list(range(1, 21))
