"""The example FastStream consumer (examples/classified_consumer.py): the same tests on
FastStream's in-memory ``TestNatsBroker`` and on the real NATS server (its own namespace);
then, on the real server only, redelivery after a failure, replay from a time, and the read-only
account of ``nats/reader-permissions.conf`` on a private server."""

from __future__ import annotations

import asyncio
import contextlib
import importlib.util
import sys
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import ModuleType
from typing import Any, Protocol

import nats
import pytest
from faststream.nats import TestNatsBroker

from tests.e2e.faults.servers import NATS_SERVER, PrivateNats
from tests.streams import drop_namespace
from tributary_contracts import (
    DP_CLASSIFIED,
    DP_RAW,
    MSG_ID_HEADER,
    WRITER_POSTGRES_DURABLE,
    ClassifiedBatch,
    ClassifiedBundle,
    ClassifiedReading,
    Namespace,
    PointClass,
    ensure_jetstream,
    partition_of,
)

EXAMPLE = Path(__file__).resolve().parents[1] / "examples" / "classified_consumer.py"
T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)


def load_example() -> ModuleType:
    spec = importlib.util.spec_from_file_location("classified_consumer_example", EXAMPLE)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


example = load_example()


def batch(source: str, values: list[float], cls: str = "critical", domain: str = "infra"):  # type: ignore[no-untyped-def]
    return ClassifiedBatch.model_validate(
        {"domain": domain, "source_id": source, "transport": "http", "received_at": T0,
         "cls": cls, "classified_at": T0,
         "points": [{"stream_id": "cpu", "value": v, "ts": T0 + timedelta(seconds=v),
                     "reason": f"{v} above 90", "rule": "alert_max"} for v in values]}
    )  # fmt: skip


def bundle(*batches: ClassifiedBatch) -> ClassifiedBundle:
    first = batches[0]
    return ClassifiedBundle(
        domain=first.domain,
        cls=first.cls,
        partition=partition_of(first.domain, first.source_id, 4),
        batches=list(batches),
    )


class Bus(Protocol):
    """Where the example runs: publish like the classifier does, wait for what it handled."""

    ns: Namespace
    received: list[ClassifiedReading]

    async def publish(self, subject: str, body: bytes, msg_id: str) -> None: ...
    async def wait_for(self, count: int) -> list[tuple[str, float]]: ...


class _Bus:
    def __init__(self, ns: Namespace) -> None:
        self.ns = ns
        self.received: list[ClassifiedReading] = []

    async def handle(self, reading: ClassifiedReading) -> None:
        self.received.append(reading)

    def seen(self) -> list[tuple[str, float]]:
        return [(r.source_id, r.point.value) for r in self.received]


class MemoryBus(_Bus):
    """FastStream's in-memory broker: a publish runs the handler before it returns."""

    def __init__(self, ns: Namespace, test_broker: Any) -> None:
        super().__init__(ns)
        self.test_broker = test_broker

    async def publish(self, subject: str, body: bytes, msg_id: str) -> None:
        await self.test_broker.publish(body, subject, headers={MSG_ID_HEADER: msg_id})

    async def wait_for(self, count: int) -> list[tuple[str, float]]:
        assert len(self.received) >= count, self.seen()
        return self.seen()


class RealBus(_Bus):
    """The real NATS server: published to JetStream, consumed by the example's durable."""

    def __init__(self, ns: Namespace, js: Any) -> None:
        super().__init__(ns)
        self.js = js

    async def publish(self, subject: str, body: bytes, msg_id: str) -> None:
        await self.js.publish(subject, body, headers={MSG_ID_HEADER: msg_id})

    async def wait_for(self, count: int) -> list[tuple[str, float]]:
        for _ in range(300):  # bounded: 30 s
            if len(self.received) >= count:
                return self.seen()
            await asyncio.sleep(0.1)
        raise AssertionError(f"expected {count} readings, got {self.seen()}")


async def real_js(nats_url: str, ns: Namespace) -> Any:
    import nats

    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_jetstream(js, ns)
    return nc, js


@pytest.fixture(params=["memory", pytest.param("real", marks=pytest.mark.integration)])
async def run_example(request: Any, servers: Any, bus_prefix: str) -> AsyncIterator[Any]:
    """Start the example with given options; yields a starter returning the Bus."""
    ns = Namespace(bus_prefix)
    started: list[Any] = []
    connections: list[Any] = []

    async def start(**options: Any) -> Bus:
        opts = example.Options(nats_url=servers.nats_url, prefix=bus_prefix, **options)
        if request.param == "memory":
            mem = MemoryBus(ns, None)
            broker = example.build_broker(opts, mem.handle)
            ctx = TestNatsBroker(broker)
            mem.test_broker = await ctx.__aenter__()
            started.append(ctx)
            return mem
        if not connections:
            connections.extend(await real_js(servers.nats_url, ns))
        real = RealBus(ns, connections[1])
        broker = example.build_broker(opts, real.handle)
        await broker.start()
        started.append(broker)
        return real

    yield start
    for item in reversed(started):
        if isinstance(item, TestNatsBroker):
            await item.__aexit__(None, None, None)
        else:
            await item.stop()
    if connections:
        await drop_namespace(connections[1], ns)
        await connections[0].close()


async def publish_bundle(bus: Bus, b: ClassifiedBundle, msg_id: str) -> None:
    subject = bus.ns.classified_partition_subject(b.domain, b.cls, b.partition)
    await bus.publish(subject, b.model_dump_json().encode(), msg_id)


async def test_receives_the_points_of_its_domain_and_class_in_order(run_example: Any) -> None:
    bus = await run_example(domain="infra", cls=PointClass.CRITICAL)
    await publish_bundle(bus, bundle(batch("s1", [91.0, 92.0]), batch("s2", [93.0])), "m1")
    await publish_bundle(bus, bundle(batch("s3", [94.0])), "m2")
    assert await bus.wait_for(4) == [("s1", 91.0), ("s1", 92.0), ("s2", 93.0), ("s3", 94.0)]
    assert {(r.domain, r.cls, r.point.rule) for r in bus.received} == {
        ("infra", PointClass.CRITICAL, "alert_max")
    }


async def test_keeps_only_the_chosen_sources(run_example: Any) -> None:
    bus = await run_example(domain="infra", cls="critical", sources=frozenset({"s2"}))
    await publish_bundle(bus, bundle(batch("s1", [91.0]), batch("s2", [93.0, 95.0])), "m1")
    assert await bus.wait_for(2) == [("s2", 93.0), ("s2", 95.0)]


async def test_other_domains_and_classes_are_not_delivered(run_example: Any) -> None:
    bus = await run_example(domain="infra", cls="critical")
    await publish_bundle(bus, bundle(batch("s1", [50.0], cls="normal")), "other-class")
    await publish_bundle(bus, bundle(batch("s1", [51.0], domain="finance")), "other-domain")
    await publish_bundle(bus, bundle(batch("s1", [91.0])), "mine")
    # The matching message was published last: once it is handled the others were passed over.
    assert await bus.wait_for(1) == [("s1", 91.0)]


async def test_reads_former_per_source_batches(run_example: Any) -> None:
    bus = await run_example(domain="infra", cls="critical")
    former = batch("a.b c", [97.0])
    await bus.publish(
        bus.ns.classified_subject("infra", "critical", "a.b c"),
        former.model_dump_json().encode(),
        "former",
    )
    assert await bus.wait_for(1) == [("a.b c", 97.0)]


async def test_a_message_that_is_not_classified_is_passed_over(run_example: Any) -> None:
    bus = await run_example(domain="infra", cls="critical")
    subject = bus.ns.classified_partition_subject("infra", "critical", 0)
    await bus.publish(subject, b'{"domain": "infra", "batches": "none"}', "bad-shape")
    await bus.publish(subject, b"not json", "not-json")
    await publish_bundle(bus, bundle(batch("s1", [91.0])), "good")
    assert await bus.wait_for(1) == [("s1", 91.0)]


def test_retry_delay_doubles_up_to_a_minute() -> None:
    assert [example.retry_delay(n) for n in (1, 2, 3, 6, 7, 20)] == [1, 2, 4, 32, 60, 60]


async def test_points_seen_before_are_handled_once(run_example: Any) -> None:
    bus = await run_example(domain="infra", cls="critical")
    await publish_bundle(bus, bundle(batch("s1", [91.0, 92.0])), "m1")
    # A replay of the same points with one more (a different message for the bus).
    await publish_bundle(bus, bundle(batch("s1", [91.0, 92.0, 93.0])), "m2")
    assert await bus.wait_for(3) == [("s1", 91.0), ("s1", 92.0), ("s1", 93.0)]
    await publish_bundle(bus, bundle(batch("s1", [94.0])), "m3")
    assert await bus.wait_for(4) == [("s1", 91.0), ("s1", 92.0), ("s1", 93.0), ("s1", 94.0)]


PERMISSIONS = Path(__file__).resolve().parents[1] / "nats" / "reader-permissions.conf"


async def wait_until(predicate: Any, what: str) -> None:
    for _ in range(300):  # bounded: 30 s
        if predicate():
            return
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


@contextlib.asynccontextmanager
async def running(opts: Any, handle: Any) -> AsyncIterator[None]:
    """The example's broker started with ``handle``, stopped on the way out."""
    broker = example.build_broker(opts, handle)
    await broker.start()
    try:
        yield
    finally:
        await broker.stop()


@pytest.fixture
async def js(servers: Any, bus_prefix: str) -> AsyncIterator[Any]:
    nc = await nats.connect(servers.nats_url)
    stream = nc.jetstream()
    await ensure_jetstream(stream, Namespace(bus_prefix))
    yield stream
    await drop_namespace(stream, bus_prefix)
    await nc.close()


async def publish(js: Any, ns: Namespace, values: list[float], msg_id: str) -> None:
    b = bundle(batch("s1", values))
    subject = ns.classified_partition_subject(b.domain, b.cls, b.partition)
    await js.publish(subject, b.model_dump_json().encode(), headers={MSG_ID_HEADER: msg_id})


@pytest.mark.integration
async def test_a_message_whose_handling_failed_is_delivered_again(
    js: Any, servers: Any, bus_prefix: str
) -> None:
    ns = Namespace(bus_prefix)
    handled: list[float] = []
    failures = [RuntimeError("downstream database unavailable")]

    async def flaky(reading: ClassifiedReading) -> None:
        if reading.point.value == 92.0 and failures:
            raise failures.pop()
        handled.append(reading.point.value)

    opts = example.Options(domain="infra", cls="critical", nats_url=servers.nats_url,
                           prefix=bus_prefix)  # fmt: skip
    async with running(opts, flaky):
        await publish(js, ns, [91.0, 92.0], "m1")
        await wait_until(lambda: 92.0 in handled, "the redelivered point")
    # The nacked message came again; 91.0 was handled on both deliveries (at least once:
    # the handler is idempotent or stores point_key uniquely), 92.0 once it succeeded.
    assert handled == [91.0, 91.0, 92.0]


@pytest.mark.integration
async def test_a_message_that_is_not_classified_is_terminated_not_retried(
    js: Any, servers: Any, bus_prefix: str
) -> None:
    ns = Namespace(bus_prefix)
    handled: list[float] = []

    async def keep(reading: ClassifiedReading) -> None:
        handled.append(reading.point.value)

    opts = example.Options(domain="infra", cls="critical", nats_url=servers.nats_url,
                           prefix=bus_prefix, durable="strict")  # fmt: skip
    async with running(opts, keep):
        subject = ns.classified_partition_subject("infra", "critical", 0)
        await js.publish(subject, b'{"domain": "infra"}', headers={MSG_ID_HEADER: "bad"})
        await publish(js, ns, [91.0], "good")
        await wait_until(lambda: handled == [91.0], "the good point")
        for _ in range(100):  # bounded: the good point's ack reaches the server
            info = await js.consumer_info(ns.stream(DP_CLASSIFIED), "strict")
            if info.ack_floor.stream_seq == 2:
                break
            await asyncio.sleep(0.1)
    # Both messages are done (the bad one terminated), neither was delivered twice.
    assert (info.ack_floor.stream_seq, info.num_ack_pending, info.num_redelivered) == (2, 0, 0)


@pytest.mark.integration
async def test_replays_from_a_timestamp(js: Any, servers: Any, bus_prefix: str) -> None:
    ns = Namespace(bus_prefix)
    for i, value in enumerate([91.0, 92.0, 93.0]):
        await publish(js, ns, [value], f"m{i}")
    stream = ns.stream(DP_CLASSIFIED)
    info = await js.stream_info(stream)
    second = await js.get_msg(stream, info.state.first_seq + 1)
    handled: list[float] = []

    async def keep(reading: ClassifiedReading) -> None:
        handled.append(reading.point.value)

    opts = example.Options(domain="infra", cls="critical", nats_url=servers.nats_url,
                           prefix=bus_prefix, since=second.time, durable="replay")  # fmt: skip
    async with running(opts, keep):
        await wait_until(lambda: len(handled) >= 2, "the replayed points")
        consumer = await js.consumer_info(stream, "replay")
    assert handled == [92.0, 93.0]
    assert consumer.config.deliver_policy == "by_start_time"
    assert consumer.config.filter_subject == ns.classified_filter("infra", "critical")


@pytest.mark.integration
async def test_a_backlog_is_handed_over_in_stream_order(
    js: Any, servers: Any, bus_prefix: str
) -> None:
    """Many messages waiting, a handler that yields: each point still comes after the one
    before it (a fetch of many would be handled concurrently by FastStream)."""
    ns = Namespace(bus_prefix)
    values = [float(90 + i) for i in range(40)]
    for i, value in enumerate(values):
        await publish(js, ns, [value], f"m{i}")
    handled: list[float] = []

    async def keep(reading: ClassifiedReading) -> None:
        await asyncio.sleep(0.002 * (int(reading.point.value) % 3))
        handled.append(reading.point.value)

    opts = example.Options(domain="infra", cls="critical", nats_url=servers.nats_url,
                           prefix=bus_prefix, durable="ordered")  # fmt: skip
    async with running(opts, keep):
        await wait_until(lambda: len(handled) >= len(values), "the backlog")
    assert handled == values


class ConfiguredNats(PrivateNats):
    """A private nats-server started from a config file that includes the permissions."""

    def command(self) -> list[str]:
        conf = self.dir / "server.conf"
        conf.write_text(
            f"listen: 127.0.0.1:{self.port}\n"
            f"jetstream {{store_dir: {self.dir / 'store'}}}\n"
            f"include {PERMISSIONS.name}\n"
        )
        (self.dir / PERMISSIONS.name).write_text(PERMISSIONS.read_text())
        return [NATS_SERVER, "-c", str(conf)]


@pytest.fixture
def secured_nats(monkeypatch: pytest.MonkeyPatch) -> Iterator[ConfiguredNats]:
    if not Path(NATS_SERVER).exists():
        pytest.skip(f"{NATS_SERVER} is not installed")
    # The snippet's passwords come from the server's environment (inherited from ours).
    monkeypatch.setenv("FLEET_PASSWORD", "fleet-secret")
    monkeypatch.setenv("READER_PASSWORD", "reader-secret")
    server = ConfiguredNats()
    try:
        server.start()
        yield server
    finally:
        server.close()


@pytest.mark.integration
async def test_read_only_account_reads_its_durable_and_nothing_else(
    secured_nats: ConfiguredNats,
) -> None:
    ns = Namespace()  # a private server: the production names, as the snippet spells them
    fleet = await nats.connect(secured_nats.url, user="fleet", password="fleet-secret")
    fleet_js = fleet.jetstream()
    await ensure_jetstream(fleet_js, ns, consumers=(WRITER_POSTGRES_DURABLE,))
    b = bundle(batch("s1", [91.0], domain="infrastructure"))
    await fleet_js.publish(
        ns.classified_partition_subject(b.domain, b.cls, b.partition),
        b.model_dump_json().encode(),
        headers={MSG_ID_HEADER: "m1"},
    )
    handled: list[float] = []

    async def keep(reading: ClassifiedReading) -> None:
        handled.append(reading.point.value)

    opts = example.Options(domain="infrastructure", cls="critical", nats_url=secured_nats.url,
                           user="reader", password="reader-secret")  # fmt: skip
    assert opts.durable_name == "reader-infrastructure-critical"
    broker = example.build_broker(opts, keep)
    errors: list[Exception] = []

    async def record(exc: Exception) -> None:
        errors.append(exc)

    reader = await nats.connect(
        secured_nats.url, user="reader", password="reader-secret", error_cb=record
    )
    try:
        await broker.start()
        await wait_until(lambda: handled == [91.0], "the reader's point")
        reader_js = reader.jetstream(timeout=2)
        with pytest.raises(Exception):  # noqa: B017 - denied: no reply, or a permissions error
            await reader_js.publish(ns.raw_partition_subject("infrastructure", 0), b"{}")
        with pytest.raises(Exception):  # noqa: B017
            sub = await reader_js.pull_subscribe_bind(
                WRITER_POSTGRES_DURABLE, ns.stream(DP_CLASSIFIED)
            )
            await sub.fetch(1, timeout=2)
    finally:
        await broker.stop()
        await reader.close()
    raw = await fleet_js.stream_info(ns.stream(DP_RAW))
    writer = await fleet_js.consumer_info(ns.stream(DP_CLASSIFIED), WRITER_POSTGRES_DURABLE)
    await fleet.close()
    assert raw.state.messages == 0
    assert writer.num_pending == 1  # the writers' message was not taken by the reader
    assert any("permissions violation" in str(e).lower() for e in errors), errors
