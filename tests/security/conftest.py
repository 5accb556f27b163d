"""Fixtures of the security tests: gateway-http, gateway-ws and csv-importer on this test's
namespace (the real local NATS), with one key per role, and helpers to drive each transport."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
import websockets
from csv_importer.app import create_app as create_importer
from csv_importer.settings import CsvImporterSettings
from nats.aio.client import Client
from nats.js import JetStreamContext

from gateway_http.app import create_app as create_http
from gateway_http.settings import GatewayHttpSettings
from gateway_ws.app import STREAM_PATH, serve_options
from gateway_ws.app import create_app as create_ws
from gateway_ws.settings import GatewayWsSettings
from tests.asgi import running
from tests.host import free_port
from tests.streams import raw_batches
from tributary_access.apikeys import ApiKeyStore, Role
from tributary_contracts import API_KEYS_BUCKET, Namespace, PointBatch
from tributary_runtime.serve import Server, build_server

SCOPED_SOURCE = "src-a"
SCOPED_DOMAIN = "infrastructure"


class QuietServer(Server):
    def install_signal_handlers(self) -> None:  # the test process keeps its own handlers
        pass


@dataclass
class Keys:
    """One key per role (and a revoked one), created in the namespace's api-keys bucket."""

    store: ApiKeyStore
    admin: str
    writer: str  # source_writer of SCOPED_SOURCE in SCOPED_DOMAIN
    reader: str  # read_only
    revoked: str  # an admin key, revoked
    unknown: str = "trb_0123456789ab_" + "Q" * 43

    def by_name(self, name: str) -> str | None:
        return None if name == "missing" else str(getattr(self, name))


@dataclass
class Fleet:
    """The three gateways of one namespace, in this process."""

    ns: Namespace
    js: JetStreamContext
    keys: Keys
    http: httpx.AsyncClient
    csv: httpx.AsyncClient
    ws_url: str
    http_app: Any = None

    def http_from(self, ip: str) -> httpx.AsyncClient:
        """A client of gateway-http whose requests come from ``ip``."""
        transport = httpx.ASGITransport(app=self.http_app, client=(ip, 40000))
        return httpx.AsyncClient(transport=transport, base_url="http://gateway")

    async def ingest(
        self, key: str | None, domain: str = SCOPED_DOMAIN, source: str = SCOPED_SOURCE,
        points: list[dict[str, Any]] | None = None, client: httpx.AsyncClient | None = None,
    ) -> httpx.Response:
        body = {
            "source_id": source,
            "domain": domain,
            "data_points": points or [{"stream_id": "cpu", "value": 1.0}],
        }
        headers = {"X-API-Key": key} if key is not None else {}
        return await (client or self.http).post("/ingest/data", json=body, headers=headers)

    async def upload(
        self, key: str | None, domain: str = SCOPED_DOMAIN, source: str = SCOPED_SOURCE
    ) -> httpx.Response:
        headers = {"X-API-Key": key} if key is not None else {}
        return await self.csv.post(
            "/ingest/csv",
            files={"file": ("d.csv", b"timestamp,cpu\n1767225600,1.5\n", "text/csv")},
            data={"domain": domain, "source_id": source},
            headers=headers,
        )

    async def ws_connect(
        self, key: str | None, domain: str = SCOPED_DOMAIN, source: str = SCOPED_SOURCE
    ) -> dict[str, Any]:
        """The reply to a connect (``connected`` or ``error``)."""
        async with websockets.connect(self.ws_url) as ws:
            message: dict[str, Any] = {"type": "connect", "source_id": source, "domain": domain}
            if key is not None:
                message["api_key"] = key
            await ws.send(orjson.dumps(message).decode())
            return dict(orjson.loads(await asyncio.wait_for(ws.recv(), 10)))

    async def raw_batches(self) -> list[PointBatch]:
        """The point batches on ``DP_RAW``, out of their bundles."""
        return [r.batch for r in await raw_batches(self.js, self.ns)]


async def make_keys(js: JetStreamContext, ns: Namespace) -> Keys:
    store = ApiKeyStore(await js.key_value(ns.bucket(API_KEYS_BUCKET)), cache_seconds=0)
    revoked = await store.issue(Role.ADMIN, "gone")
    await store.revoke(revoked.record.key_id)
    return Keys(
        store,
        admin=await store.create(Role.ADMIN, "ops"),
        writer=await store.create(
            Role.SOURCE_WRITER, "one source", source_ids=[SCOPED_SOURCE], domains=[SCOPED_DOMAIN]
        ),
        reader=await store.create(Role.READ_ONLY, "dashboards"),
        revoked=revoked.key,
    )


@asynccontextmanager
async def fleet_on(
    servers: Any, bus_prefix: str, nc: Client, js: JetStreamContext, spool: Path,
    **limits: Any,
) -> AsyncIterator[Fleet]:
    common = {"nats_url": servers.nats_url, "bus_prefix": bus_prefix, "api_key_cache_seconds": 0}
    common |= limits
    http_app = create_http(GatewayHttpSettings(**common), nats_client=nc)
    csv_app = create_importer(CsvImporterSettings(**common, spool_dir=spool), nats_client=nc)
    ws_settings = GatewayWsSettings(**common, port=free_port())
    ws_app = create_ws(ws_settings, nats_client=nc)
    server = build_server(
        ws_app, ws_settings, server_class=QuietServer, **serve_options(ws_app, ws_settings)
    )
    ns = Namespace(bus_prefix)
    async with running(http_app), running(csv_app):
        task = asyncio.create_task(server.serve())
        for _ in range(200):  # bounded: at most ~10 s
            if server.started or task.done():
                break
            await asyncio.sleep(0.05)
        assert server.started, "gateway-ws did not start"
        try:
            async with (
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=http_app), base_url="http://gateway"
                ) as http,
                httpx.AsyncClient(
                    transport=httpx.ASGITransport(app=csv_app), base_url="http://importer"
                ) as csv,
            ):
                yield Fleet(
                    ns, js, await make_keys(js, ns), http, csv,
                    f"ws://127.0.0.1:{ws_settings.port}{STREAM_PATH}", http_app,
                )
        finally:
            server.should_exit = True
            await asyncio.wait_for(task, 30)


@pytest.fixture
def start_fleet(
    servers: Any, bus_prefix: str, nats_client: Client, jetstream: JetStreamContext,
    tmp_path: Path,
) -> Any:
    """``async with start_fleet(**limit_settings) as fleet``."""

    def start(**limits: Any) -> Any:
        return fleet_on(servers, bus_prefix, nats_client, jetstream, tmp_path / "spool", **limits)

    return start


@pytest.fixture
async def fleet(start_fleet: Any) -> AsyncIterator[Fleet]:
    async with start_fleet() as running_fleet:
        yield running_fleet


@pytest.fixture
def run_writer(servers: Any, bus_prefix: str, database_dsn: str, jetstream: Any) -> Any:
    """``async with run_writer():`` writer-postgres started inline (create_app + lifespan) on
    this test's bus prefix and database."""
    from writer_postgres.app import create_app
    from writer_postgres.settings import WriterPostgresSettings

    @asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[Any]:
        settings = WriterPostgresSettings(
            nats_url=servers.nats_url, bus_prefix=bus_prefix, postgres_dsn=database_dsn,
            fetch_timeout_seconds=0.05, **overrides,
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            yield app

    return run
