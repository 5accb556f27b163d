"""The pipeline and its coalescer on a fake JetStream and a fake broker connection: bundling,
PUBACK order, retries, abandoning on reconnect, backpressure, rejections and redelivered
timestamp-less messages."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import SimpleNamespace
from typing import Any

import orjson
import pytest

from gateway_mqtt.pipeline import Pipeline
from gateway_mqtt.settings import GatewayMqttSettings
from tributary_contracts import (
    DEFAULT_PARTITIONS,
    MSG_ID_HEADER,
    PointBatch,
    PointBundle,
    RejectedInput,
    Transport,
    partition_of,
)
from tributary_ingest.coalesce import Coalescer


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
    """A JetStream as the coalescer sees it: records publishes; ``hold`` keeps a subject's
    PubAcks back until released; ``fail`` makes publishes raise."""

    def __init__(self) -> None:
        self.published: list[tuple[str, bytes, dict[str, str]]] = []
        self.fail = False
        self.hold: dict[str, asyncio.Event] = {}  # subject → released
        self.tasks: set[asyncio.Future[None]] = set()

    async def publish_async(
        self, subject: str, payload: bytes, wait_stall: float, headers: dict[str, str]
    ) -> asyncio.Future[Any]:
        if self.fail:
            raise ConnectionError("bus down")
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        event = self.hold.get(subject)
        if event is None:
            self._ack(subject, payload, headers, future)
        else:
            task = asyncio.ensure_future(self._held(event, subject, payload, headers, future))
            self.tasks.add(task)
        return future

    async def _held(self, event: asyncio.Event, *args: Any) -> None:
        await event.wait()
        self._ack(*args)

    def _ack(self, subject: str, payload: bytes, headers: dict[str, str], future: Any) -> None:
        self.published.append((subject, payload, headers))
        future.set_result(SimpleNamespace(duplicate=False))

    def batches(self) -> list[PointBatch]:
        return [
            b
            for s, p, _ in self.published
            if ".raw." in s
            for b in PointBundle.model_validate_json(p).batches
        ]


def settings(**overrides: Any) -> GatewayMqttSettings:
    return GatewayMqttSettings(**{"bundle_linger_ms": 5, **overrides})


def pipeline_on(
    bus: FakeBus, options: GatewayMqttSettings | None = None, max_message_bytes: int = 1 << 20
) -> Pipeline:
    options = options or settings()
    coalescer = Coalescer(
        bus,  # type: ignore[arg-type]
        options.namespace,
        transport=Transport.MQTT,
        partitions=options.bus_partitions,
        linger_seconds=options.bundle_linger_ms / 1000,
        timeout=options.publish_timeout_seconds,
        max_message_bytes=max_message_bytes,
        excerpt_bytes=options.rejected_excerpt_bytes,
    )
    return Pipeline(options, coalescer)


def value(v: float, ts: str | None = "2026-02-25T21:00:00Z") -> bytes:
    body: dict[str, Any] = {"value": v}
    if ts is not None:
        body["timestamp"] = ts
    return orjson.dumps(body)


async def settle(pipeline: Pipeline, seconds: float = 0.05) -> None:
    await asyncio.sleep(seconds)
    await pipeline.drain(1.0)


async def test_messages_of_one_partition_go_out_in_one_bundle_after_the_linger() -> None:
    bus, broker = FakeBus(), FakeBroker()
    pipeline = pipeline_on(bus)
    pipeline.attach(broker)

    for mid in range(1, 4):
        pipeline.handle(FakeMessage(mid, value(mid, f"2026-02-25T21:00:0{mid}Z")))
    assert bus.published == [] and broker.acks == []  # lingering
    await settle(pipeline)

    assert [[p.value for p in b.points] for b in bus.batches()] == [[1.0], [2.0], [3.0]]
    assert broker.acks == [1, 2, 3]
    partition = partition_of("infrastructure", "server-01", DEFAULT_PARTITIONS)
    assert [s for s, _, _ in bus.published] == [f"dp.raw.infrastructure.part.{partition}"]
    assert MSG_ID_HEADER in bus.published[0][2]


async def test_domains_are_bundled_apart_and_pubacks_keep_receipt_order() -> None:
    bus, broker = FakeBus(), FakeBroker()
    held = f"dp.raw.finance.part.{partition_of('finance', 'exchange', DEFAULT_PARTITIONS)}"
    bus.hold[held] = asyncio.Event()
    pipeline = pipeline_on(bus)
    pipeline.attach(broker)

    pipeline.handle(FakeMessage(1, value(1), topic="finance/exchange/price/data"))
    pipeline.handle(FakeMessage(2, value(2)))
    pipeline.handle(FakeMessage(3, value(3), topic="finance/exchange/price/data"))
    await asyncio.sleep(0.05)
    # server-01's bundle (message 2) is acked by JetStream, but 1 arrived first: no PUBACK yet.
    assert [b.source_id for b in bus.batches()] == ["server-01"]
    assert broker.acks == []

    bus.hold[held].set()
    await settle(pipeline)
    assert broker.acks == [1, 2, 3]


async def test_nothing_is_acked_while_jetstream_fails_and_all_is_once_it_recovers() -> None:
    bus, broker = FakeBus(), FakeBroker()
    bus.fail = True
    pipeline = pipeline_on(bus)
    pipeline.attach(broker)

    pipeline.handle(FakeMessage(1, value(1)))
    pipeline.handle(FakeMessage(2, b"not json"))
    await asyncio.sleep(0.3)
    assert broker.acks == [] and pipeline.in_flight == 2

    bus.fail = False
    await asyncio.sleep(0.5)  # the retry backoff is at most 2 s; these are early retries
    await settle(pipeline)
    assert broker.acks == [1, 2]
    assert [p.value for b in bus.batches() for p in b.points] == [1.0]


async def test_reading_pauses_above_max_in_flight_and_resumes_when_acked() -> None:
    bus, broker = FakeBus(), FakeBroker()
    bus.fail = True
    pipeline = pipeline_on(bus, settings(max_in_flight=2))
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
    pipeline = pipeline_on(bus)
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
    pipeline = pipeline_on(bus)
    pipeline.attach(broker)
    pipeline.handle(FakeMessage(7, value(12.5, ts=None)))
    await asyncio.sleep(0.05)
    pipeline.detach()  # connection lost before JetStream acked
    reattached = datetime.now(UTC)
    bus.fail = False

    pipeline.attach(FakeBroker())
    await asyncio.sleep(0.01)
    pipeline.handle(FakeMessage(7, value(12.5, ts=None), dup=True))
    pipeline.handle(FakeMessage(8, value(12.5, ts=None)))  # same payload, another message
    await settle(pipeline)

    # Two distinct points (a retry of 7 still in flight at the detach may also land: the same
    # point, deduplicated downstream by its key): 7 kept its first receive time, from before the
    # reconnection; 8 has its own, after it.
    times = sorted({p.ts for b in bus.batches() for p in b.points})
    assert len(times) == 2
    assert times[0] < reattached <= times[1]


async def test_a_bad_message_is_published_as_rejected_and_then_acked() -> None:
    bus, broker = FakeBus(), FakeBroker()
    pipeline = pipeline_on(bus)
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
    assert rejected[0].rejected[0].reason == "value must be a number, got the text 'high'"
    assert rejected[0].rejected[0].excerpt == '{"value": "high"}'
    assert (rejected[1].domain, rejected[1].source_id) == ("iot", "a")
    assert broker.acks == [1, 2]


async def test_qos0_messages_are_published_and_never_acked() -> None:
    bus, broker = FakeBus(), FakeBroker()
    pipeline = pipeline_on(bus)
    pipeline.attach(broker)

    pipeline.handle(FakeMessage(0, value(1), qos=0))
    await settle(pipeline)

    assert len(bus.batches()) == 1 and broker.acks == [] and pipeline.in_flight == 0


@pytest.mark.parametrize("metadata_bytes", [7000])
async def test_bundles_too_large_for_one_message_are_split(metadata_bytes: int) -> None:
    bus, broker = FakeBus(), FakeBroker()
    pipeline = pipeline_on(bus, max_message_bytes=64 * 1024)
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
