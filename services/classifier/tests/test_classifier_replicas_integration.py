"""Two classifier replicas (``CLASSIFIER_REPLICAS=2``, ``BUS_PARTITIONS=4``) against the real
local NATS.

Both run ``python -m classifier`` on this test's namespace at the same time; replica k owns the
partitions p with p % 2 == k and reads them through the durables ``classifier-part-<p>``
(server-side filter ``dp.raw.*.part.<p>``). Every point must be classified exactly once, each
durable must have delivered only its own partition's bundles, and each stream's run of
violations, which spans several messages, must open and close its alert as in one process.
Every wait is bounded; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
from collections import Counter
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import orjson
import pytest
from nats.js import JetStreamContext

from classifier.classify import ClassifierState, classify_message
from classifier.consumers import ensure_drain_durable
from classifier.state import source_doc_json, source_doc_key
from tests.host import free_port
from tributary_contracts import (
    CLASSIFIER_DURABLE,
    CLASSIFIER_STATE_BUCKET,
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
    classifier_partition_durable,
    ensure_jetstream,
    partition_of,
    stream_config_key,
)

pytestmark = pytest.mark.integration

T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)
PARTITIONS = 4
SOURCES = [f"host-{i}" for i in range(10)]
# per source, 4 messages of 3 points: warnings from the 2nd point, the alert opens at the 4th
# (3 in a row, across two messages), closes at the 6th
VALUES = [20, 35, 36, 37, 38, 20, 20, 35, 20, 20, 20, 20]
CONFIG = StreamConfig.model_validate(
    {
        "value_constraints": {"warning_max": 30},
        "consecutive_violations_required": 3,
        "cooldown_seconds": 0,
    }
)


def start_replica(
    servers: Any, bus_prefix: str, port: int, index: int, **env: str
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "NATS_URL": servers.nats_url,
        "BUS_PREFIX": bus_prefix,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "FETCH_TIMEOUT_SECONDS": "0.05",
        "DRAIN_FETCH_TIMEOUT_SECONDS": "0.05",
        "BUS_PARTITIONS": str(PARTITIONS),
        "CLASSIFIER_REPLICAS": "2",
        "CLASSIFIER_REPLICA": str(index),
        **env,
    }
    return subprocess.Popen(
        [sys.executable, "-m", "classifier"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


def batch(source: str, m: int) -> PointBatch:
    """Message ``m`` (0-3) of ``source``: points 3m … 3m+2 of VALUES."""
    points = [
        DataPoint(stream_id="temp", value=VALUES[i], ts=T0 + timedelta(seconds=i))
        for i in range(3 * m, 3 * m + 3)
    ]
    return PointBatch(
        domain="iot", source_id=source, transport="http", received_at=T0, points=points
    )


async def until(check: Any, what: str, within: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.1)


async def metric(client: httpx.AsyncClient, port: int, name: str) -> float:
    text = (await client.get(f"http://127.0.0.1:{port}/metrics")).text
    [line] = [ln for ln in text.splitlines() if ln.startswith(f"{name} ")]
    return float(line.split()[1])


async def stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()


async def classified_points(js: JetStreamContext, ns: Namespace) -> list[tuple[str, Any, str]]:
    stream = ns.stream(DP_CLASSIFIED)
    out = [
        ClassifiedBundle.model_validate_json((await js.get_msg(stream, s)).data)
        for s in range(1, (await js.stream_info(stream)).state.messages + 1)
    ]
    return [(b.source_id, p, str(b.cls)) for x in out for b in x.batches for p in b.points]


async def alert_events(js: JetStreamContext, ns: Namespace) -> dict[str, list[Any]]:
    stream = ns.stream(DP_EVENTS)
    count = (await js.stream_info(stream)).state.messages
    by_source: dict[str, list[tuple[str, int, float]]] = {}
    for s in range(1, count + 1):
        e = AlertEvent.model_validate_json((await js.get_msg(stream, s)).data)
        by_source.setdefault(e.source_id, []).append(
            (str(e.event), e.violation_count, e.first_value)
        )
    return by_source


async def test_two_replicas_read_only_their_partitions_and_classify_every_point_once(
    servers: Any, bus_prefix: str, jetstream: JetStreamContext
) -> None:
    ns, js = Namespace(bus_prefix), jetstream
    owners = {s: partition_of("iot", s, PARTITIONS) for s in SOURCES}
    assert set(owners.values()) == set(range(PARTITIONS))  # every partition has sources
    await ensure_jetstream(js, ns)
    kv = await js.key_value(ns.bucket(STREAM_CONFIGS_BUCKET))
    await kv.put(stream_config_key("iot", "*", "temp"), CONFIG.model_dump_json().encode())
    bundles = Counter[int]()
    for m in range(4):  # as gateways publish them: one bundle per partition and round
        for p in range(PARTITIONS):
            batches = [batch(s, m) for s in SOURCES if owners[s] == p]
            bundle = PointBundle(domain="iot", partition=p, batches=batches)
            await js.publish(ns.raw_partition_subject("iot", p), bundle.model_dump_json().encode())
            bundles[p] += 1

    ports = [free_port(), free_port()]
    processes = [start_replica(servers, bus_prefix, ports[i], i) for i in (0, 1)]
    try:
        async with httpx.AsyncClient(timeout=2) as client:

            async def all_done() -> bool:
                for i, process in enumerate(processes):
                    if process.poll() is not None:
                        pytest.fail(f"replica {i} exited with {process.returncode}")
                try:
                    infos = [
                        await js.consumer_info(ns.stream(DP_RAW), classifier_partition_durable(p))
                        for p in range(PARTITIONS)
                    ]
                except Exception:  # not created yet
                    return False
                return not any(i.num_pending or i.num_ack_pending for i in infos)

            await until(all_done, "both replicas to drain DP_RAW", within=60)
            await asyncio.sleep(0.5)  # anything classified twice would land by now
            received = [
                await metric(client, p, "classifier_received_messages_total") for p in ports
            ]
            points = [await metric(client, p, "classifier_received_points_total") for p in ports]
    finally:
        await stop(processes)

    delivered = {
        p: (await js.consumer_info(ns.stream(DP_RAW), classifier_partition_durable(p))).delivered
        for p in range(PARTITIONS)
    }
    # each durable delivered exactly its own partition's bundles, once each
    assert {p: d.consumer_seq for p, d in delivered.items()} == dict(bundles)
    # replica k read only the partitions p with p % 2 == k: half the stream each
    assert received == [4.0 * 2, 4.0 * 2]
    assert points == [12.0 * sum(1 for s in SOURCES if owners[s] % 2 == k) for k in (0, 1)]

    got = await classified_points(js, ns)
    keys = Counter((source, p.ts) for source, p, _ in got)
    expected = {(s, T0 + timedelta(seconds=i)) for s in SOURCES for i in range(len(VALUES))}
    assert set(keys) == expected and set(keys.values()) == {1}  # every point exactly once
    warnings = {(source, p.value) for source, p, cls in got if cls == "warning"}
    assert warnings == {(s, v) for s in SOURCES for v in (35.0, 36.0, 37.0, 38.0)}
    # the run crossed message boundaries: counted by one process, in order
    assert await alert_events(js, ns) == {
        s: [("opened", 3, 35.0), ("closed", 4, 35.0)] for s in SOURCES
    }


async def test_drain_durables_start_after_the_former_classifiers_ack_floor(
    bus_prefix: str, jetstream: JetStreamContext
) -> None:
    ns, js = Namespace(bus_prefix), jetstream
    await ensure_jetstream(js, ns)
    # the former classifier's durable (filter dp.raw.>) finished messages 1-3, then stopped
    await js.add_consumer(
        ns.stream(DP_RAW),
        durable_name=CLASSIFIER_DURABLE,
        filter_subject=ns.all_raw(),
        ack_policy="explicit",
    )
    for i in range(5):
        await js.publish(ns.raw_subject("iot", f"s{i}"), b"{}")
    sub = await js.pull_subscribe_bind(durable=CLASSIFIER_DURABLE, stream=ns.stream(DP_RAW))
    for msg in await sub.fetch(3, timeout=5):
        await msg.ack()
    await sub.unsubscribe()
    await asyncio.sleep(0.2)

    names = [await ensure_drain_durable(js, ns, p) for p in (0, 1)]

    assert names == ["classifier-drain-0", "classifier-drain-1"]
    for name in names:
        config = (await js.consumer_info(ns.stream(DP_RAW), name)).config
        assert (str(config.deliver_policy), config.opt_start_seq) == ("by_start_sequence", 4)
        assert config.filter_subject == f"{ns.prefix}.dp.raw.*.*"
    # again: the existing durables are kept as they are
    assert await ensure_drain_durable(js, ns, 0) == "classifier-drain-0"


async def test_an_upgraded_fleet_drains_the_former_subjects_once_and_reads_the_new_ones(
    servers: Any, bus_prefix: str, jetstream: JetStreamContext
) -> None:
    ns, js = Namespace(bus_prefix), jetstream
    owners = {s: partition_of("iot", s, PARTITIONS) for s in SOURCES}
    await ensure_jetstream(js, ns)
    kv = await js.key_value(ns.bucket(STREAM_CONFIGS_BUCKET))
    await kv.put(stream_config_key("iot", "*", "temp"), CONFIG.model_dump_json().encode())
    # The former fleet: per-source subjects, read by the former durable, which classified
    # the first round (acked) and stopped; rounds 1-2 wait in the stream.
    await js.add_consumer(
        ns.stream(DP_RAW),
        durable_name=CLASSIFIER_DURABLE,
        filter_subject=ns.all_raw(),
        ack_policy="explicit",
    )
    for m in range(3):
        for source in SOURCES:
            await js.publish(
                ns.raw_subject("iot", source), batch(source, m).model_dump_json().encode()
            )
    sub = await js.pull_subscribe_bind(durable=CLASSIFIER_DURABLE, stream=ns.stream(DP_RAW))
    for msg in await sub.fetch(len(SOURCES), timeout=5):
        await msg.ack()
    await sub.unsubscribe()
    await asyncio.sleep(0.2)
    # ... and left its checkpoints, one "f": 2 document per source (a run of 2 warnings)
    former = ClassifierState()
    state_kv = await js.key_value(ns.bucket(CLASSIFIER_STATE_BUCKET))
    for source in SOURCES:
        classify_message(batch(source, 0), lambda *_: CONFIG, former)
        doc = (("iot", source, 0), ["temp"], former.streams)
        body = {**orjson.loads(source_doc_json(*doc)), "f": 2}
        del body["n"], body["seq"]
        await state_kv.put(source_doc_key(doc[0]), orjson.dumps(body))
    # The upgraded gateways already publish round 3 as bundles.
    for p in range(PARTITIONS):
        batches = [batch(s, 3) for s in SOURCES if owners[s] == p]
        bundle = PointBundle(domain="iot", partition=p, batches=batches)
        await js.publish(ns.raw_partition_subject("iot", p), bundle.model_dump_json().encode())

    ports = [free_port(), free_port()]
    processes = [start_replica(servers, bus_prefix, ports[i], i) for i in (0, 1)]
    try:

        async def all_done() -> bool:
            for i, process in enumerate(processes):
                if process.poll() is not None:
                    pytest.fail(f"replica {i} exited with {process.returncode}")
            durables = [classifier_partition_durable(p) for p in range(PARTITIONS)]
            durables += [f"classifier-drain-{p}" for p in range(PARTITIONS)]
            try:
                infos = [await js.consumer_info(ns.stream(DP_RAW), d) for d in durables]
            except Exception:  # not created yet
                return False
            return not any(i.num_pending or i.num_ack_pending for i in infos)

        await until(all_done, "the drains and the partitions to be done", within=60)
        await asyncio.sleep(0.5)  # anything classified twice would land by now
    finally:
        await stop(processes)

    got = await classified_points(js, ns)
    keys = Counter((source, p.ts) for source, p, _ in got)
    # round 0 was the former classifier's; rounds 1-2 drained, round 3 from the bundles
    expected = {(s, T0 + timedelta(seconds=i)) for s in SOURCES for i in range(3, 12)}
    assert set(keys) == expected and set(keys.values()) == {1}
    # the run of violations went on from the former checkpoints into the drained rounds
    assert await alert_events(js, ns) == {
        s: [("opened", 3, 35.0), ("closed", 4, 35.0)] for s in SOURCES
    }
