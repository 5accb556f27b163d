"""MQTT producer (mosquitto_pub) → gateway-mqtt → JetStream → classifier → writer-postgres → rows.

The fleet runs in its own bus namespace; gateway-mqtt's topic prefix defaults to that namespace,
so this module publishes under ``<bus_prefix>/`` and never sees another fleet's messages.
"""

from __future__ import annotations

import asyncio
import subprocess
import time
from datetime import UTC, datetime

import httpx
import pytest

from tests import mqtt
from tests.e2e.fleet_process import FleetProcess
from tests.e2e.rows import rows_for

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)


def mosquitto_pub(fleet: FleetProcess, topic: str, message: str) -> None:
    """Exactly the seed's command, at QoS 1, under the fleet's topic prefix (as its producer)."""
    login = mqtt.producer(fleet.bus_prefix)
    subprocess.run(
        ["mosquitto_pub", *login.pub_args(), "-q", "1", "-t", f"{fleet.bus_prefix}/{topic}",
         "-m", message],
        check=True,
        timeout=10,
    )  # fmt: skip


async def wait_mqtt_ready(fleet: FleetProcess, timeout: float = 20.0) -> None:
    async with httpx.AsyncClient(base_url=fleet.url("gateway-mqtt"), timeout=2) as client:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = await client.get("/ready")
            if reply.status_code == 200:
                return
            await asyncio.sleep(0.2)
    raise AssertionError(f"gateway-mqtt not ready: {reply.text}")


async def test_the_seed_infrastructure_example_is_stored_with_its_class(
    fleet: FleetProcess,
) -> None:
    await wait_mqtt_ready(fleet)
    mosquitto_pub(
        fleet,
        "infrastructure/server-01/cpu_usage/data",
        '{"value": 45.2, "timestamp": "2026-02-25T21:00:00Z"}',
    )

    rows = await rows_for(fleet.postgres_dsn, "server-01", want=1)
    assert [(r["domain"], r["stream_id"], r["value"], r["cls"], r["time"]) for r in rows] == [
        ("infrastructure", "cpu_usage", 45.2, "normal", T0)
    ]
    assert rows[0]["transport"] == "mqtt"


async def test_the_seed_finance_example_without_timestamp_gets_its_receive_time(
    fleet: FleetProcess,
) -> None:
    await wait_mqtt_ready(fleet)
    before = datetime.now(UTC)
    mosquitto_pub(fleet, "finance/trading-system/latency_ms/data", '{"value": 12.5}')

    rows = await rows_for(fleet.postgres_dsn, "trading-system", want=1)
    assert [(r["domain"], r["stream_id"], r["value"], r["cls"]) for r in rows] == [
        ("finance", "latency_ms", 12.5, "normal")
    ]
    assert before <= rows[0]["time"] <= datetime.now(UTC)


async def test_the_legacy_topic_is_stored_as_an_iot_sensor(fleet: FleetProcess) -> None:
    await wait_mqtt_ready(fleet)
    mosquitto_pub(fleet, "iot/sensors/17/readings", '{"value": 21.5, "timestamp": 1772053200}')

    rows = await rows_for(fleet.postgres_dsn, "sensor-17", want=1)
    assert [(r["domain"], r["stream_id"], r["value"], r["cls"], r["time"]) for r in rows] == [
        ("iot", "17", 21.5, "normal", T0)
    ]


async def test_the_same_message_published_twice_is_stored_once(fleet: FleetProcess) -> None:
    await wait_mqtt_ready(fleet)
    message = '{"value": 3.5, "timestamp": "2026-03-01T00:00:00Z"}'
    mosquitto_pub(fleet, "infrastructure/dup-src/cpu_usage/data", message)
    mosquitto_pub(fleet, "infrastructure/dup-src/cpu_usage/data", message)
    mosquitto_pub(fleet, "infrastructure/dup-src/zz_marker/data", message)

    rows = await rows_for(fleet.postgres_dsn, "dup-src", want=2)
    await asyncio.sleep(0.5)
    rows = await rows_for(fleet.postgres_dsn, "dup-src", want=2)
    assert [(r["stream_id"], r["value"]) for r in rows] == [("cpu_usage", 3.5), ("zz_marker", 3.5)]
