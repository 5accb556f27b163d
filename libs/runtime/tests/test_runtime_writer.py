"""tributary_runtime.writer's and .delivery's bus helpers against the real local NATS (own bus
prefix each)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
import structlog
from nats.js.api import ConsumerConfig

from tests.writers import consumer_metrics
from tributary_contracts import CONSUMERS, DP_CLASSIFIED, DP_DLQ, Namespace, ensure_consumer
from tributary_runtime.breaker import CircuitBreaker
from tributary_runtime.delivery import dead_letter_publisher
from tributary_runtime.writer import WriterSettings, check_consumer, consume

pytestmark = pytest.mark.integration

DURABLE = "writer-postgres"


async def test_check_consumer_accepts_the_defined_filter_and_names_a_wrong_one(
    bus_prefix: str, jetstream: Any
) -> None:
    ns = Namespace(bus_prefix)
    await ensure_consumer(jetstream, ns, DURABLE)
    await check_consumer(jetstream, ns, DURABLE)  # as defined: no error

    stream = CONSUMERS[DURABLE].stream_name(ns)
    await jetstream.delete_consumer(stream, DURABLE)
    wrong = ns.classified_subject("iot", "normal", "only-this")
    await jetstream.add_consumer(stream, ConsumerConfig(durable_name=DURABLE,
                                                        filter_subject=wrong))
    with pytest.raises(RuntimeError, match=f"consumer {DURABLE} filters '{wrong}'"):
        await check_consumer(jetstream, ns, DURABLE)


async def test_consume_fetches_nothing_while_the_breaker_is_open_then_every_message(
    bus_prefix: str, jetstream: Any
) -> None:
    ns = Namespace(bus_prefix)
    await ensure_consumer(jetstream, ns, DURABLE)
    for i in range(5):
        await jetstream.publish(ns.classified_subject("iot", "normal", f"s{i}"), f"{i}".encode())
    stopping = asyncio.Event()
    got: list[bytes] = []
    sizes: list[int] = []
    database_up = asyncio.Event()

    async def probe() -> None:
        if not database_up.is_set():
            raise OSError("down")

    metrics = consumer_metrics()
    breaker = CircuitBreaker(probe, metrics, structlog.get_logger(), store="test",
                             threshold=1, probe_min_seconds=0.05, probe_max_seconds=0.1)
    breaker.failure("down")  # open before the first fetch

    async def handle(messages: Any) -> None:
        assert database_up.is_set(), "fetched while the breaker was open"
        sizes.append(len(messages))
        for msg in messages:
            got.append(msg.data)
            await msg.ack()
        if len(got) >= 5:
            stopping.set()

    settings = WriterSettings(bus_prefix=bus_prefix, fetch_batch_size=2,
                              fetch_timeout_seconds=0.5)
    loop = asyncio.create_task(
        consume(jetstream, settings, DURABLE, DP_CLASSIFIED, handle, stopping, breaker=breaker,
                metrics=metrics, log=structlog.get_logger(), describe=repr)
    )
    await asyncio.sleep(0.5)
    assert breaker.is_open and got == [] and metrics.CIRCUIT_OPEN._value.get() == 1
    database_up.set()
    await asyncio.wait_for(loop, timeout=20)
    assert sorted(got) == [b"0", b"1", b"2", b"3", b"4"]
    assert max(sizes) <= 2 and not breaker.is_open and metrics.CIRCUIT_OPEN._value.get() == 0
    stages = {s.labels["stage"] for s in metrics.ERRORS.collect()[0].samples}
    assert stages <= {"probe"}  # failed probes only, no failed fetch
    await breaker.close()


async def test_dead_letter_publisher_publishes_on_the_consumer_dlq_subject(
    bus_prefix: str, jetstream: Any
) -> None:
    ns = Namespace(bus_prefix)
    publish = dead_letter_publisher(jetstream, ns, DURABLE)
    await publish(b"refused", {"Tributary-Test": "1"})
    sub = await jetstream.pull_subscribe(ns.dlq_subject(DURABLE), stream=ns.stream(DP_DLQ))
    [msg] = await sub.fetch(1, timeout=5)
    assert (msg.data, msg.headers["Tributary-Test"]) == (b"refused", "1")
    await msg.ack()
