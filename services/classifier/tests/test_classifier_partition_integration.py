"""Two partition processes (``CLASSIFIER_PARTITIONS=2``) against the real local NATS.

Both run ``python -m classifier`` on this test's namespace at the same time. Every point must be
classified exactly once, by the partition that owns its source, and each stream's run of
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
import pytest
from nats.js import JetStreamContext

from classifier.partition import ensure_partition_consumer, partition_durable, source_partition
from tests.host import free_port
from tributary_contracts import (
    CLASSIFIER_DURABLE,
    DP_CLASSIFIED,
    DP_EVENTS,
    DP_RAW,
    STREAM_CONFIGS_BUCKET,
    AlertEvent,
    ClassifiedBatch,
    DataPoint,
    Namespace,
    PointBatch,
    StreamConfig,
    ensure_consumer,
    ensure_jetstream,
    stream_config_key,
)

pytestmark = pytest.mark.integration

T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)
SOURCES = [f"host-{i}" for i in range(6)]
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


def start_partition(
    servers: Any, bus_prefix: str, port: int, index: int
) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "NATS_URL": servers.nats_url,
        "BUS_PREFIX": bus_prefix,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "FETCH_TIMEOUT_SECONDS": "0.05",
        "CLASSIFIER_PARTITIONS": "2",
        "CLASSIFIER_PARTITION": str(index),
    }
    return subprocess.Popen(
        [sys.executable, "-m", "classifier"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
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


async def test_two_partitions_classify_every_point_once_with_per_stream_state(
    servers: Any, bus_prefix: str, jetstream: JetStreamContext
) -> None:
    ns, js = Namespace(bus_prefix), jetstream
    owners = {s: source_partition("iot", s, 2) for s in SOURCES}
    assert set(owners.values()) == {0, 1}  # both partitions have sources to classify
    await ensure_jetstream(js, ns)
    kv = await js.key_value(ns.bucket(STREAM_CONFIGS_BUCKET))
    await kv.put(stream_config_key("iot", "*", "temp"), CONFIG.model_dump_json().encode())
    for m in range(4):
        for source in SOURCES:
            points = [
                DataPoint(stream_id="temp", value=VALUES[i], ts=T0 + timedelta(seconds=i))
                for i in range(3 * m, 3 * m + 3)
            ]
            batch = PointBatch(
                domain="iot", source_id=source, transport="http", received_at=T0, points=points
            )
            await js.publish(ns.raw_subject("iot", source), batch.model_dump_json().encode())

    ports = [free_port(), free_port()]
    processes = [start_partition(servers, bus_prefix, ports[i], i) for i in (0, 1)]
    try:
        async with httpx.AsyncClient(timeout=2) as client:

            async def both_done() -> bool:
                for i, process in enumerate(processes):
                    if process.poll() is not None:
                        pytest.fail(f"partition {i} exited with {process.returncode}")
                try:
                    infos = [
                        await js.consumer_info(ns.stream(DP_RAW), partition_durable(i, 2))
                        for i in (0, 1)
                    ]
                except Exception:  # not created yet
                    return False
                if any(i.num_pending or i.num_ack_pending for i in infos):
                    return False
                classified = (await js.stream_info(ns.stream(DP_CLASSIFIED))).state.messages
                return bool(classified > 0)

            await until(both_done, "both partitions to drain DP_RAW", within=60)
            await asyncio.sleep(0.5)  # anything classified twice would land by now
            received = [await metric(client, p, "classifier_received_points_total") for p in ports]
            skipped = [
                await metric(client, p, "classifier_other_partition_messages_total") for p in ports
            ]
    finally:
        for process in processes:
            process.terminate()
        for process in processes:
            try:
                process.wait(timeout=15)
            except subprocess.TimeoutExpired:
                process.kill()

    out = [
        ClassifiedBatch.model_validate_json((await js.get_msg(ns.stream(DP_CLASSIFIED), s)).data)
        for s in range(1, (await js.stream_info(ns.stream(DP_CLASSIFIED))).state.messages + 1)
    ]
    keys = Counter((b.source_id, p.ts) for b in out for p in b.points)
    expected = {(s, T0 + timedelta(seconds=i)) for s in SOURCES for i in range(len(VALUES))}
    assert set(keys) == expected and set(keys.values()) == {1}  # every point exactly once
    warnings = {(b.source_id, p.value) for b in out if str(b.cls) == "warning" for p in b.points}
    assert warnings == {(s, v) for s in SOURCES for v in (35.0, 36.0, 37.0, 38.0)}

    events_stream = ns.stream(DP_EVENTS)
    count = (await js.stream_info(events_stream)).state.messages
    events = [
        AlertEvent.model_validate_json((await js.get_msg(events_stream, s)).data)
        for s in range(1, count + 1)
    ]
    by_source: dict[str, list[tuple[str, int, float]]] = {}
    for e in events:
        by_source.setdefault(e.source_id, []).append(
            (str(e.event), e.violation_count, e.first_value)
        )
    # the run crossed message boundaries: counted by one process, in order
    assert by_source == {s: [("opened", 3, 35.0), ("closed", 4, 35.0)] for s in SOURCES}

    mine = [sum(1 for s in SOURCES if owners[s] == i) for i in (0, 1)]
    assert received == [12.0 * mine[0], 12.0 * mine[1]]
    assert skipped == [4.0 * mine[1], 4.0 * mine[0]]


async def test_partition_durables_start_after_the_former_layouts_ack_floor(
    bus_prefix: str, jetstream: JetStreamContext
) -> None:
    ns, js = Namespace(bus_prefix), jetstream
    await ensure_jetstream(js, ns)
    await ensure_consumer(js, ns, CLASSIFIER_DURABLE)  # the one-partition layout ran before
    for i in range(5):
        await js.publish(ns.raw_subject("iot", f"s{i}"), b"{}")
    sub = await js.pull_subscribe_bind(durable=CLASSIFIER_DURABLE, stream=ns.stream(DP_RAW))
    for msg in await sub.fetch(3, timeout=5):
        await msg.ack()  # it finished messages 1-3, then stopped
    await sub.unsubscribe()
    await asyncio.sleep(0.2)

    names = [await ensure_partition_consumer(js, ns, i, 2) for i in (0, 1)]

    assert names == ["classifier-0-of-2", "classifier-1-of-2"]
    for name in names:  # the sibling started first does not count: both start after 3
        config = (await js.consumer_info(ns.stream(DP_RAW), name)).config
        assert (str(config.deliver_policy), config.opt_start_seq) == ("by_start_sequence", 4)
    # again: the existing durables are kept as they are
    assert await ensure_partition_consumer(js, ns, 0, 2) == "classifier-0-of-2"
