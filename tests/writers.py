"""What the tests of the ``dp.classified.>`` writers (writer-postgres, writer-sqlserver) and of
``tributary_runtime``'s delivery, writer and breaker share: a stand-in for a JetStream message,
a consumer's metrics in a registry of their own, publishing a batch, and bounded waits on the
writer's durable consumer and its DLQ."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from types import SimpleNamespace
from typing import Any

import pytest
from prometheus_client import CollectorRegistry, Counter, Gauge

from tributary_contracts import DP_CLASSIFIED, DP_DLQ, ClassifiedBatch, ClassifiedBundle, Namespace

WAIT_SECONDS = 20.0


@dataclass
class RecordingMsg:
    """Stands in for a nats-py ``Msg``: records how the writer settled it."""

    data: bytes
    num_delivered: int = 1
    subject: str = "dp.classified.infrastructure.warning.server-01"
    settled: list[tuple[str, float | None]] = field(default_factory=list)

    @property
    def metadata(self) -> Any:
        return SimpleNamespace(num_delivered=self.num_delivered)

    async def ack(self) -> None:
        self.settled.append(("ack", None))

    async def nak(self, delay: float | None = None) -> None:
        self.settled.append(("nak", delay))


def consumer_metrics() -> Any:
    """The counters and gauges a consumer's metrics module defines (``DeliveryMetrics``,
    ``WriterMetrics``, ``BreakerMetrics``), in a registry of their own."""
    registry = CollectorRegistry()
    return SimpleNamespace(
        MESSAGES_RECEIVED=Counter("received", "", registry=registry),
        MESSAGES_SKIPPED=Counter("skipped", "", registry=registry),
        MESSAGES_ACKED=Counter("acked", "", registry=registry),
        MESSAGES_NAKKED=Counter("nakked", "", registry=registry),
        DLQ=Counter("dlq", "", ["reason"], registry=registry),
        ERRORS=Counter("errors", "", ["stage", "error_type"], registry=registry),
        CIRCUIT_OPEN=Gauge("circuit_open", "", registry=registry),
        CIRCUIT_OPENED=Counter("circuit_opened", "", registry=registry),
    )


async def wait_until(check: Callable[[], Awaitable[bool]], what: str) -> None:
    """Poll ``check`` until true; fail after WAIT_SECONDS (every wait here is bounded)."""
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while not await check():
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def publish(js: Any, ns: Namespace, batch: ClassifiedBatch) -> None:
    """Publish ``batch`` on its ``dp.classified`` subject, as the classifier does."""
    subject = ns.classified_subject(batch.domain, batch.cls, batch.source_id)
    await js.publish(subject, batch.model_dump_json().encode(), stream=ns.stream(DP_CLASSIFIED))


async def publish_bundle(
    js: Any, ns: Namespace, batches: list[ClassifiedBatch], partition: int = 0
) -> ClassifiedBundle:
    """Publish ``batches`` (one domain and class) as one ClassifiedBundle on its partitioned
    subject, as the classifier does."""
    bundle = ClassifiedBundle(
        domain=batches[0].domain, cls=batches[0].cls, partition=partition, batches=batches
    )
    subject = ns.classified_partition_subject(bundle.domain, bundle.cls, partition)
    await js.publish(subject, bundle.model_dump_json().encode(), stream=ns.stream(DP_CLASSIFIED))
    return bundle


async def consumer_settled(js: Any, ns: Namespace, durable: str) -> bool:
    """Has the durable ``durable`` been delivered, and acked, everything on the stream?"""
    info = await js.consumer_info(ns.stream(DP_CLASSIFIED), durable)
    last = (await js.stream_info(ns.stream(DP_CLASSIFIED))).state.last_seq
    return bool(info.num_pending == 0 and info.num_ack_pending == 0
                and info.delivered.stream_seq == last)


async def dead_letters(js: Any, ns: Namespace, consumer: str, expected: int) -> list[Any]:
    """Exactly the messages on this namespace's DLQ of ``consumer`` (waits for ``expected``)."""
    sub = await js.pull_subscribe(ns.dlq_subject(consumer), stream=ns.stream(DP_DLQ))
    got: list[Any] = []
    deadline = asyncio.get_running_loop().time() + WAIT_SECONDS
    while len(got) < expected and asyncio.get_running_loop().time() < deadline:
        try:
            got += await sub.fetch(expected - len(got), timeout=1)
        except TimeoutError:
            continue
    try:  # and nothing more than expected
        got += await sub.fetch(1, timeout=0.5)
    except TimeoutError:
        pass
    await sub.unsubscribe()
    return got
