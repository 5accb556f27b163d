"""Fixtures of the gateway-mqtt tests: a topic prefix and client id per test, the gateway run
in-process through its ASGI lifespan, a real MQTT publisher, and readers of the namespaced
streams."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import paho.mqtt.client as paho
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext
from paho.mqtt.enums import CallbackAPIVersion
from starlette.applications import Starlette

from gateway_mqtt.app import create_app
from gateway_mqtt.settings import GatewayMqttSettings
from tests.asgi import running
from tests.streams import StoredMessage, stored_messages
from tributary_contracts import Namespace, PointBatch, PointBundle

MQTT_HOST, MQTT_PORT = "127.0.0.1", 1883


@pytest.fixture
def topic_prefix() -> str:
    """Topic levels no other test publishes under."""
    return f"t-{uuid.uuid4().hex[:10]}"


def publish_sync(messages: list[tuple[str, bytes | str]], qos: int = 1) -> None:
    """Publish with a real paho client and wait for every PUBACK from the broker."""
    client = paho.Client(CallbackAPIVersion.VERSION2, client_id=f"pub-{uuid.uuid4().hex[:8]}")
    client.connect(MQTT_HOST, MQTT_PORT)
    client.loop_start()
    try:
        infos = [client.publish(topic, payload, qos=qos) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=10)
            assert info.is_published()
    finally:
        client.disconnect()
        client.loop_stop()


async def publish(messages: list[tuple[str, bytes | str]], qos: int = 1) -> None:
    await asyncio.to_thread(publish_sync, messages, qos)


async def mosquitto_pub(topic: str, message: str, qos: int = 1) -> None:
    """The seed's way of publishing: one ``mosquitto_pub`` per message."""
    proc = await asyncio.create_subprocess_exec(
        "mosquitto_pub", "-h", MQTT_HOST, "-p", str(MQTT_PORT), "-q", str(qos),
        "-t", topic, "-m", message,
    )  # fmt: skip
    assert await asyncio.wait_for(proc.wait(), 10) == 0


async def wait_for_messages(
    js: JetStreamContext, stream: str, count: int, timeout: float = 10.0
) -> list[StoredMessage]:
    """The stream's messages once it holds at least ``count`` (or whatever it has at timeout)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            info = await js.stream_info(stream)
            if info.state.messages >= count:
                break
        except Exception:
            pass
        await asyncio.sleep(0.05)
    return await stored_messages(js, stream)


def batches(messages: list[StoredMessage]) -> list[PointBatch]:
    """The point batches inside stored raw bundles, in order."""
    return [b for m in messages for b in PointBundle.model_validate_json(m.data).batches]


def make_settings(
    servers: Any, bus_prefix: str, topic_prefix: str, **overrides: Any
) -> GatewayMqttSettings:
    values: dict[str, Any] = {
        "nats_url": servers.nats_url,
        "bus_prefix": bus_prefix,
        "mqtt_topic_prefix": topic_prefix,
        "mqtt_client_id": f"gw-{topic_prefix}",
        "mqtt_session_expiry_seconds": 60,
        "mqtt_reconnect_min_seconds": 0.05,
        "mqtt_reconnect_max_seconds": 0.5,
        "bundle_linger_ms": 5,
    }
    values.update(overrides)
    return GatewayMqttSettings(**values)


@dataclass
class Gateway:
    app: Starlette
    settings: GatewayMqttSettings
    ns: Namespace
    js: JetStreamContext
    prefix: str

    def topic(self, rest: str) -> str:
        return f"{self.prefix}/{rest}"

    async def raw(self, count: int, timeout: float = 10.0) -> list[StoredMessage]:
        """The raw stream's bundles once they hold at least ``count`` point batches."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            stored = await stored_messages(self.js, self.ns.stream("DP_RAW"))
            if len(batches(stored)) >= count:
                return stored
            await asyncio.sleep(0.05)
        return await stored_messages(self.js, self.ns.stream("DP_RAW"))

    async def rejected(self, count: int, timeout: float = 10.0) -> list[StoredMessage]:
        return await wait_for_messages(self.js, self.ns.stream("DP_REJECTED"), count, timeout)


async def wait_connected(app: Starlette, timeout: float = 10.0) -> None:
    """Until ``/ready`` says the broker connection (and its subscriptions) is up."""
    import httpx

    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://gw") as client:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            reply = await client.get("/ready")
            if reply.status_code == 200:
                return
            await asyncio.sleep(0.05)
    raise AssertionError(f"gateway not ready: {reply.text}")


@asynccontextmanager
async def gateway_on(
    settings: GatewayMqttSettings, nc: Client, js: JetStreamContext
) -> AsyncIterator[Gateway]:
    app = create_app(settings, nats_client=nc)
    async with running(app):
        await wait_connected(app)
        yield Gateway(app, settings, settings.namespace, js, settings.topic_prefix)


@pytest.fixture
def start_gateway(
    servers: Any,
    bus_prefix: str,
    topic_prefix: str,
    nats_client: Client,
    jetstream: JetStreamContext,
) -> Any:
    """``async with start_gateway(**settings) as gw``: a gateway on this test's namespaces."""

    def start(**overrides: Any) -> Any:
        settings = make_settings(servers, bus_prefix, topic_prefix, **overrides)
        return gateway_on(settings, nats_client, jetstream)

    return start


@pytest.fixture
async def gateway(start_gateway: Any) -> AsyncIterator[Gateway]:
    async with start_gateway() as gw:
        yield gw


@dataclass(frozen=True)
class Helpers:
    """Module-level helpers handed to tests as a fixture (test modules cannot import conftest
    under ``--import-mode=importlib``)."""

    publish: Any = publish
    publish_sync: Any = publish_sync
    mosquitto_pub: Any = mosquitto_pub
    wait_for_messages: Any = wait_for_messages
    batches: Any = batches
    make_settings: Any = make_settings


@pytest.fixture
def mq() -> Helpers:
    return Helpers()
