"""tributary_runtime.writer's bus helpers against the real local NATS (own bus prefix each)."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest
from nats.js.api import ConsumerConfig

from tributary_contracts import CONSUMERS, DP_DLQ, Namespace, ensure_consumer
from tributary_runtime.writer import check_consumer, dead_letter_publisher, pull_loop

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


async def test_pull_loop_hands_every_fetch_to_handle_after_ready_and_stops(
    bus_prefix: str, jetstream: Any
) -> None:
    ns = Namespace(bus_prefix)
    await ensure_consumer(jetstream, ns, DURABLE)
    for i in range(5):
        await jetstream.publish(ns.classified_subject("iot", "normal", f"s{i}"), f"{i}".encode())
    stopping = asyncio.Event()
    got: list[bytes] = []
    sizes: list[int] = []
    gate = {"calls": 0}
    errors: list[Exception] = []

    async def ready() -> bool:
        gate["calls"] += 1
        return gate["calls"] > 1  # the first round is held back, as an open breaker would

    async def handle(messages: Any) -> None:
        sizes.append(len(messages))
        for msg in messages:
            got.append(msg.data)
            await msg.ack()
        if len(got) >= 5:
            stopping.set()

    await asyncio.wait_for(
        pull_loop(jetstream, CONSUMERS[DURABLE].stream_name(ns), DURABLE, handle, stopping,
                  fetch_size=lambda: 2, fetch_timeout=0.5, ready=ready,
                  on_error=errors.append),
        timeout=20,
    )
    assert sorted(got) == [b"0", b"1", b"2", b"3", b"4"]
    assert max(sizes) <= 2 and gate["calls"] >= 2 and errors == []


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
