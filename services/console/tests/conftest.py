"""Fixtures of the console tests: the writer's schema in this test's own database (built by
writer-postgres's migrations, the schema the console reads), rows inserted as the owner, and the
console app built inline on this test's namespace, reading as the read-only role."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
import httpx
import pytest
from nats.js import JetStreamContext

from console.app import create_app
from console.settings import ConsoleSettings
from tests.asgi import running
from tributary_access.apikeys import ApiKeyStore, Role
from tributary_contracts import API_KEYS_BUCKET
from writer_postgres.migrate import migrate


def reader_dsn(dsn: str) -> str:
    base, _, name = dsn.rpartition("/")
    host = base.rpartition("@")[2]
    return f"postgresql://tributary_reader@{host}/{name}"


@dataclass
class Console:
    client: httpx.AsyncClient
    settings: ConsoleSettings
    js: JetStreamContext
    keys: ApiKeyStore
    dsn: str  # the owner's DSN (inserts)
    admin: str
    reader: str  # a read_only key

    async def get(self, path: str, key: str | None = "reader", **kwargs: Any) -> httpx.Response:
        headers = dict(kwargs.pop("headers", {}))
        if key is not None:
            headers["X-API-Key"] = {"reader": self.reader, "admin": self.admin}.get(key, key)
        return await self.client.get(path, headers=headers, **kwargs)

    async def execute(self, sql: str, *args: Any) -> None:
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.execute(sql, *args)
        finally:
            await conn.close()

    async def insert_points(self, rows: list[tuple[str, str, str, datetime, float, str]]) -> None:
        """(domain, source, stream, time, value, cls) rows, as writer-postgres stores them."""
        conn = await asyncpg.connect(self.dsn)
        try:
            await conn.executemany(
                "INSERT INTO data_points (domain, source_id, stream_id, time, value, cls, reason,"
                " transport, config_version) VALUES ($1, $2, $3, $4, $5, $6, $7, 'http', 1)",
                [(*r, f"reason {r[5]}") for r in rows],
            )
        finally:
            await conn.close()


@pytest.fixture
async def console(
    servers: Any,
    bus_prefix: str,
    nats_client: Any,
    jetstream: JetStreamContext,
    database_dsn: str,
) -> AsyncIterator[Console]:
    await migrate(database_dsn)
    settings = ConsoleSettings(
        nats_url=servers.nats_url,
        bus_prefix=bus_prefix,
        postgres_read_dsn=reader_dsn(database_dsn),
        fleet_services="nothing=http://127.0.0.1:9",
        fleet_scrape_seconds=60,
    )
    app = create_app(settings, nats_client=nats_client)
    keys = ApiKeyStore(await jetstream.key_value(settings.namespace.bucket(API_KEYS_BUCKET)))
    admin = await keys.create(Role.ADMIN, "test admin")
    reader = await keys.create(Role.READ_ONLY, "test reader")
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://console") as client:
            yield Console(client, settings, jetstream, keys, database_dsn, admin, reader)
