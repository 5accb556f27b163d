"""Alert events and state checkpoints against the real local NATS, on this test's namespace.

The first test runs the service inline (``create_app`` lifespan); the kill -9 test runs
``python -m classifier`` as a process, kills it with SIGKILL between points and starts it again.
Every wait is bounded; everything listens on 127.0.0.1.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext

from classifier.app import create_app
from classifier.settings import ClassifierSettings
from classifier.state import source_doc_from_json
from tests.host import free_port
from tributary_contracts import (
    CLASSIFIER_STATE_BUCKET,
    DEFAULT_PARTITIONS,
    DP_EVENTS,
    DP_RAW,
    MSG_ID_HEADER,
    STREAM_CONFIGS_BUCKET,
    AlertEvent,
    DataPoint,
    Namespace,
    PointBatch,
    PointBundle,
    StreamConfig,
    ValueConstraints,
    classifier_partition_durable,
    escape_key,
    partition_of,
    stream_config_key,
)

pytestmark = pytest.mark.integration

T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)
CONFIG = StreamConfig(
    value_constraints=ValueConstraints(warning_max=30, alert_max=60),
    consecutive_violations_required=3,
)


def batch_at(series: dict[int, float], source_id: str = "dev.1") -> PointBatch:
    points = [
        DataPoint(stream_id="temp", value=v, ts=T0 + timedelta(seconds=s))
        for s, v in series.items()
    ]
    return PointBatch(
        domain="iot", source_id=source_id, transport="http", received_at=T0, points=points
    )


async def until(check: Callable[[], Awaitable[bool]], what: str, within: float = 15.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + within
    while not await check():
        if loop.time() > deadline:
            pytest.fail(f"timed out after {within} s waiting for {what}")
        await asyncio.sleep(0.05)


async def events(js: JetStreamContext, ns: Namespace) -> list[tuple[str, str, AlertEvent]]:
    """Every message of the namespace's DP_EVENTS: (subject, Nats-Msg-Id, event)."""
    stream = ns.stream(DP_EVENTS)
    count = (await js.stream_info(stream)).state.messages
    found = []
    for seq in range(1, count + 1):
        msg = await js.get_msg(stream, seq)
        found.append(
            (
                msg.subject,
                (msg.headers or {}).get(MSG_ID_HEADER, ""),
                AlertEvent.model_validate_json(msg.data),
            )
        )
    return found


PARTITION = partition_of("iot", "dev.1", DEFAULT_PARTITIONS)


async def publish(js: JetStreamContext, ns: Namespace, batch: PointBatch) -> None:
    """``batch`` as a bundle of one batch on its partition's subject, as a gateway sends it."""
    bundle = PointBundle(domain=batch.domain, partition=PARTITION, batches=[batch])
    await js.publish(ns.raw_partition_subject("iot", PARTITION), bundle.model_dump_json().encode())


async def inputs_acked(js: JetStreamContext, ns: Namespace) -> bool:
    info = await js.consumer_info(ns.stream(DP_RAW), classifier_partition_durable(PARTITION))
    return bool(info.num_pending == 0 and info.num_ack_pending == 0)


async def put_config(js: JetStreamContext, ns: Namespace, config: StreamConfig) -> int:
    kv = await js.key_value(ns.bucket(STREAM_CONFIGS_BUCKET))
    key = stream_config_key("iot", "*", "temp")
    return int(await kv.put(key, config.model_dump_json().encode()))


async def test_alert_events_land_on_dp_events_with_their_subjects_and_msg_ids(
    servers: Any, bus_prefix: str, jetstream: JetStreamContext
) -> None:
    ns = Namespace(bus_prefix)
    js = jetstream
    settings = ClassifierSettings(
        nats_url=servers.nats_url, bus_prefix=bus_prefix, fetch_timeout_seconds=0.05
    )
    revision = await put_config(js, ns, CONFIG)
    app = create_app(settings)
    async with app.router.lifespan_context(app):
        await publish(js, ns, batch_at({0: 35, 1: 36, 2: 37, 3: 38}))
        await publish(js, ns, batch_at({4: 70}))
        await publish(js, ns, batch_at({5: 20}))
        # a redelivery of the first batch (a gateway retry) changes nothing
        await publish(js, ns, batch_at({0: 35, 1: 36, 2: 37, 3: 38}))

        async def four_events() -> bool:
            return (await js.stream_info(ns.stream(DP_EVENTS))).state.messages >= 4

        await until(four_events, "four alert events")
        await until(lambda: inputs_acked(js, ns), "inputs acked")
        await asyncio.sleep(0.3)
        got = await events(js, ns)
        last_seq = (await js.stream_info(ns.stream(DP_RAW))).state.last_seq
        kv = await js.key_value(ns.bucket(CLASSIFIER_STATE_BUCKET))
        checkpoint = await kv.get(f"{escape_key('iot')}.{escape_key('dev.1')}")

    assert [(s, str(e.event), str(e.severity)) for s, _, e in got] == [
        (ns.alert_subject("iot", "warning", "dev.1"), "opened", "warning"),
        (ns.alert_subject("iot", "warning", "dev.1"), "closed", "warning"),
        (ns.alert_subject("iot", "critical", "dev.1"), "escalated", "critical"),
        (ns.alert_subject("iot", "critical", "dev.1"), "closed", "critical"),
    ]
    assert [msg_id for _, msg_id, _ in got] == [f"{e.alert_id}:{e.event}" for _, _, e in got]
    opened, closed_warning, escalated, closed_critical = (e for _, _, e in got)
    assert (opened.source_id, opened.stream_id, opened.config_version) == (
        "dev.1",
        "temp",
        revision,
    )
    assert (opened.first_value, opened.last_value, opened.violation_count) == (35.0, 37.0, 3)
    assert closed_warning.alert_id == opened.alert_id
    assert closed_warning.violation_count == 4
    assert closed_critical.alert_id == escalated.alert_id
    assert closed_critical.closed_at == T0 + timedelta(seconds=5)
    assert checkpoint.value is not None
    doc = source_doc_from_json(checkpoint.value)
    [(key, restored)] = doc.states
    assert key == ("iot", "dev.1", "temp") and restored.alert is None and restored.run == 0
    assert doc.covered == last_seq  # the state holds every input, up to the last bundle


def start_classifier(servers: Any, bus_prefix: str, port: int) -> subprocess.Popen[bytes]:
    env = {
        **os.environ,
        "NATS_URL": servers.nats_url,
        "BUS_PREFIX": bus_prefix,
        "HOST": "127.0.0.1",
        "PORT": str(port),
        "LOG_LEVEL": "WARNING",
        "FETCH_TIMEOUT_SECONDS": "0.05",
    }
    return subprocess.Popen(
        [sys.executable, "-m", "classifier"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_ready(port: int, process: subprocess.Popen[bytes]) -> None:
    async with httpx.AsyncClient(timeout=1) as client:

        async def ready() -> bool:
            if process.poll() is not None:
                pytest.fail(f"classifier exited with {process.returncode}")
            try:
                return (await client.get(f"http://127.0.0.1:{port}/ready")).status_code == 200
            except httpx.HTTPError:
                return False

        await until(ready, "the classifier to be ready", within=30)


def kill_9(process: subprocess.Popen[bytes]) -> None:
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=10)


async def test_kill_9_mid_stream_then_restart_continues_counters_and_open_alerts(
    servers: Any, bus_prefix: str, jetstream: JetStreamContext
) -> None:
    ns = Namespace(bus_prefix)
    js = jetstream
    await put_config(js, ns, CONFIG)
    port = free_port()
    process = start_classifier(servers, bus_prefix, port)
    try:
        await wait_ready(port, process)
        # 2 of the 3 violating points, then kill -9
        await publish(js, ns, batch_at({0: 20, 1: 35, 2: 36}))
        await until(lambda: inputs_acked(js, ns), "the first batch acked")
        kill_9(process)

        # the third violating point after a restart: exactly one opened event, counting all 3
        process = start_classifier(servers, bus_prefix, port)
        await wait_ready(port, process)
        await publish(js, ns, batch_at({3: 37}))
        await until(lambda: inputs_acked(js, ns), "the second batch acked")

        async def one_event() -> bool:
            return (await js.stream_info(ns.stream(DP_EVENTS))).state.messages >= 1

        await until(one_event, "the opened event")
        kill_9(process)

        # the open alert survives the next kill: a violating point extends it, a normal one
        # closes the same alert
        process = start_classifier(servers, bus_prefix, port)
        await wait_ready(port, process)
        await publish(js, ns, batch_at({4: 45}))
        await publish(js, ns, batch_at({5: 10}))

        async def two_events() -> bool:
            return (await js.stream_info(ns.stream(DP_EVENTS))).state.messages >= 2

        await until(two_events, "the closed event")
        await until(lambda: inputs_acked(js, ns), "every batch acked")
        await asyncio.sleep(0.3)
        got = await events(js, ns)
    finally:
        if process.poll() is None:
            process.terminate()
            try:
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                kill_9(process)

    assert [str(e.event) for _, _, e in got] == ["opened", "closed"]
    opened, closed = got[0][2], got[1][2]
    assert (opened.first_value, opened.first_at, opened.violation_count) == (
        35.0,
        T0 + timedelta(seconds=1),
        3,
    )
    assert (closed.alert_id, closed.violation_count, closed.peak_value, closed.last_value) == (
        opened.alert_id,
        4,
        45.0,
        45.0,
    )
    assert closed.closed_at == T0 + timedelta(seconds=5)
