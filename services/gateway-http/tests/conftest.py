"""Fixtures of the gateway-http tests: the app built inline on this test's namespace, its
lifespan run through the real ASGI lifespan protocol, and an httpx client on it."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from nats.aio.client import Client
from nats.js import JetStreamContext

from gateway_http.app import create_app
from gateway_http.settings import GatewayHttpSettings
from tests.asgi import running
from tributary_access.apikeys import ApiKeyStore, Role
from tributary_contracts import API_KEYS_BUCKET, Namespace


@dataclass
class Gateway:
    """A running gateway and what a test needs around it."""

    client: httpx.AsyncClient
    settings: GatewayHttpSettings
    ns: Namespace
    js: JetStreamContext
    keys: ApiKeyStore
    key: str  # an ingest key

    async def post(self, body: Any, key: str | None = "default", **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["X-API-Key"] = self.key if key == "default" else key
        return await self.client.post("/ingest/data", json=body, headers=headers, **kwargs)


def make_settings(servers: Any, bus_prefix: str, **overrides: Any) -> GatewayHttpSettings:
    return GatewayHttpSettings(nats_url=servers.nats_url, bus_prefix=bus_prefix, **overrides)


@asynccontextmanager
async def gateway_on(
    settings: GatewayHttpSettings, nc: Client, js: JetStreamContext
) -> AsyncIterator[Gateway]:
    app = create_app(settings, nats_client=nc)
    keys = ApiKeyStore(await js.key_value(settings.namespace.bucket(API_KEYS_BUCKET)))
    key = await keys.create(Role.SOURCE_WRITER, "tests")
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://gateway") as client:
            yield Gateway(client, settings, settings.namespace, js, keys, key)


@pytest.fixture
async def gateway(
    servers: Any, bus_prefix: str, nats_client: Client, jetstream: JetStreamContext
) -> AsyncIterator[Gateway]:
    async with gateway_on(make_settings(servers, bus_prefix), nats_client, jetstream) as gw:
        yield gw


@pytest.fixture
def start_gateway(
    servers: Any, bus_prefix: str, nats_client: Client, jetstream: JetStreamContext
) -> Any:
    """``start_gateway(nc=None, **settings)``: a gateway with other settings or connection."""

    def start(nc: Client | None = None, **overrides: Any) -> Any:
        settings = make_settings(servers, bus_prefix, **overrides)
        return gateway_on(settings, nc or nats_client, jetstream)

    return start


@pytest.fixture
def run_lifespan() -> Any:
    """``async with run_lifespan(app):`` runs the app's ASGI lifespan around the block."""
    return running
