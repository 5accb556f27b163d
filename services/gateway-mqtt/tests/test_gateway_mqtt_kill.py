"""Kill -9 between receiving and acknowledging: the broker redelivers to the restarted process
(same client id, persistent session) and every point is stored exactly once."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from nats.js import JetStreamContext

from tests.host import free_port
from tributary_contracts import Namespace, ensure_jetstream

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[3]


def start(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "gateway_mqtt"],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def metric(url: str, name: str) -> float:
    async with httpx.AsyncClient(base_url=url, timeout=2) as client:
        text = (await client.get("/metrics")).text
    return next(float(line.split()[1]) for line in text.splitlines() if line.startswith(name + " "))


async def wait_until(check: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if await check():
                return
        except (httpx.HTTPError, StopIteration):
            pass
        await asyncio.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


async def ready(url: str) -> bool:
    async with httpx.AsyncClient(base_url=url, timeout=2) as client:
        return (await client.get("/ready")).status_code == 200


async def test_a_gateway_killed_before_acking_gets_the_messages_again_and_stores_them_once(
    servers: Any, bus_prefix: str, topic_prefix: str, jetstream: JetStreamContext, mq: Any
) -> None:
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "NATS_URL": servers.nats_url,
        "BUS_PREFIX": bus_prefix,
        "MQTT_TOPIC_PREFIX": topic_prefix,
        "MQTT_CLIENT_ID": f"kill-{topic_prefix}",
        "MQTT_SESSION_EXPIRY_SECONDS": "60",
        "PORT": str(port),
        "LOG_FORMAT": "json",
    }
    ns = Namespace(bus_prefix)
    raw = ns.stream("DP_RAW")
    first = start(env)
    try:
        await wait_until(lambda: ready(url), 20, "the first gateway to be ready")
        # JetStream will not acknowledge: the gateway receives and holds, without PUBACK.
        await jetstream.delete_stream(raw)
        topic = f"{topic_prefix}/infrastructure/kill-test/cpu/data"
        await mq.publish(
            [(topic, b'{"value": 1, "timestamp": 1772053200}'), (topic, b'{"value": 2}')]
        )

        async def both_in_flight() -> bool:
            return await metric(url, "gateway_mqtt_in_flight") == 2

        await wait_until(both_in_flight, 10, "both messages to be received and unacked")
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait(timeout=10)
    assert first.returncode == -signal.SIGKILL

    await ensure_jetstream(jetstream, ns)
    second = start(env)
    try:
        await wait_until(lambda: ready(url), 20, "the restarted gateway to be ready")
        stored = await mq.wait_for_messages(jetstream, raw, 1, timeout=10)
        await asyncio.sleep(1.0)  # room for any duplicate to show up
        stored = await mq.wait_for_messages(jetstream, raw, 0)
        redelivered = await metric(url, "gateway_mqtt_redeliveries_total")
        in_flight = await metric(url, "gateway_mqtt_in_flight")
    finally:
        second.terminate()
        second.wait(timeout=20)

    points = [p for b in mq.batches(stored) for p in b.points]
    assert sorted(p.value for p in points) == [1.0, 2.0]
    assert redelivered == 2  # the broker sent both again, flagged DUP
    assert in_flight == 0  # and this time they were acknowledged
    assert second.returncode in (0, -signal.SIGTERM)  # uvicorn re-raises SIGTERM after a clean stop
