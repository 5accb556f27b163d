"""Fixtures of the gateway-ws tests: the app served by uvicorn (the same server and options as
production) on a free 127.0.0.1 port, on this test's namespace, and helpers around it."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from typing import Any

import orjson
import pytest
import websockets
from nats.aio.client import Client
from nats.js import JetStreamContext

from gateway_ws.app import STREAM_PATH, create_app, serve_options
from gateway_ws.registry import SessionRegistry
from gateway_ws.settings import GatewayWsSettings
from tests.host import free_port
from tests.streams import RawBatch, raw_batches
from tributary_access.apikeys import ApiKeyStore, Role
from tributary_contracts import API_KEYS_BUCKET, Namespace, PointBatch
from tributary_runtime.serve import Server, build_server


class QuietServer(Server):
    """No signal handlers: pytest owns SIGINT."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


@dataclass
class Gateway:
    """A running gateway and what a test needs around it."""

    url: str
    http_url: str
    settings: GatewayWsSettings
    ns: Namespace
    js: JetStreamContext
    keys: ApiKeyStore
    key: str  # an ingest key
    sessions: SessionRegistry
    server: Server
    task: asyncio.Task[None]

    async def handshake(self, ws: Any, source_id: str = "server-01", **extra: Any) -> Any:
        """Send ``connect`` for ``source_id`` and return the ``connected`` reply."""
        await ws.send(
            orjson.dumps(
                {
                    "type": "connect",
                    "source_id": source_id,
                    "domain": "infrastructure",
                    "api_key": self.key,
                    **extra,
                }
            ).decode()
        )
        reply = orjson.loads(await asyncio.wait_for(ws.recv(), 5))
        assert reply["type"] == "connected", reply
        return reply

    def connect(self, **kwargs: Any) -> Any:
        kwargs.setdefault("open_timeout", 5)
        kwargs.setdefault("close_timeout", 5)
        return websockets.connect(self.url, **kwargs)

    async def stop(self) -> None:
        """Shut the server down as SIGTERM would (drain, then uvicorn's shutdown)."""
        self.server.should_exit = True
        await asyncio.wait_for(self.task, 30)

    async def raw_points(self) -> list[PointBatch]:
        """The point batches on the raw stream, out of their bundles, in order."""
        return [r.batch for r in await raw_batches(self.js, self.ns)]

    async def raw_batches(self) -> list[RawBatch]:
        return await raw_batches(self.js, self.ns)


def make_settings(servers: Any, bus_prefix: str, **overrides: Any) -> GatewayWsSettings:
    overrides.setdefault("port", free_port())
    return GatewayWsSettings(nats_url=servers.nats_url, bus_prefix=bus_prefix, **overrides)


@asynccontextmanager
async def gateway_on(
    settings: GatewayWsSettings,
    nc: Client,
    js: JetStreamContext,
    sock: socket.socket | None = None,
) -> AsyncIterator[Gateway]:
    app = create_app(settings, nats_client=nc)
    server = build_server(app, settings, server_class=QuietServer, **serve_options(app, settings))
    task = asyncio.create_task(server.serve(sockets=[sock] if sock is not None else None))
    for _ in range(200):  # bounded: at most ~10 s
        if server.started or task.done():
            break
        await asyncio.sleep(0.05)
    if not server.started:
        task.cancel()
        raise RuntimeError("gateway did not start")
    ns = settings.namespace
    keys = ApiKeyStore(await js.key_value(ns.bucket(API_KEYS_BUCKET)))
    key = await keys.create(Role.SOURCE_WRITER, "tests")
    gw = Gateway(
        f"ws://127.0.0.1:{settings.port}{STREAM_PATH}",
        f"http://127.0.0.1:{settings.port}",
        settings,
        ns,
        js,
        keys,
        key,
        app.state.sessions,
        server,
        task,
    )
    try:
        yield gw
    finally:
        if not task.done():
            await gw.stop()


@pytest.fixture
async def start_gateway(
    servers: Any, bus_prefix: str, nats_client: Client, jetstream: JetStreamContext
) -> AsyncIterator[Any]:
    """``async with start_gateway(**settings) as gw``: a gateway with these settings."""

    def start(nc: Client | None = None, sock: socket.socket | None = None, **overrides: Any) -> Any:
        if sock is not None:
            overrides["port"] = sock.getsockname()[1]
        settings = make_settings(servers, bus_prefix, **overrides)
        return gateway_on(settings, nc or nats_client, jetstream, sock)

    yield start


@pytest.fixture
async def gateway(start_gateway: Any) -> AsyncIterator[Gateway]:
    async with start_gateway() as gw:
        yield gw
