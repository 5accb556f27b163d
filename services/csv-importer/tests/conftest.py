"""Fixtures of the csv-importer tests: the app built inline on this test's namespace and spool
dir, its lifespan run through the real ASGI lifespan protocol, and an httpx client on it."""

from __future__ import annotations

import asyncio
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from csv_importer.app import create_app
from csv_importer.settings import CsvImporterSettings
from nats.aio.client import Client
from nats.js import JetStreamContext

from tests.asgi import running
from tributary_access.apikeys import ApiKeyStore, Role
from tributary_contracts import API_KEYS_BUCKET, Namespace

FINISHED = ("completed", "failed", "cancelled")


@dataclass
class Importer:
    """A running importer and what a test needs around it."""

    client: httpx.AsyncClient
    settings: CsvImporterSettings
    ns: Namespace
    js: JetStreamContext
    keys: ApiKeyStore
    key: str  # an ingest key

    async def upload(
        self,
        content: bytes | str,
        key: str | None = "default",
        filename: str = "data.csv",
        **fields: str,
    ) -> httpx.Response:
        data = content.encode() if isinstance(content, str) else content
        headers = {}
        if key is not None:
            headers["X-API-Key"] = self.key if key == "default" else key
        form = {"source_id": "src-1", "domain": "infrastructure", **fields}
        form = {k: v for k, v in form.items() if v is not None}
        return await self.client.post(
            "/ingest/csv", files={"file": (filename, data, "text/csv")}, data=form, headers=headers
        )

    async def job(self, job_id: str) -> dict[str, Any]:
        reply = await self.client.get(f"/ingest/csv/jobs/{job_id}", headers={"X-API-Key": self.key})
        assert reply.status_code == 200, reply.text
        return dict(reply.json())

    async def finished(self, job_id: str, timeout: float = 30.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job = await self.job(job_id)
        while job["status"] not in FINISHED and time.monotonic() < deadline:
            await asyncio.sleep(0.05)
            job = await self.job(job_id)
        return job


def make_settings(
    servers: Any, bus_prefix: str, spool: Path, **overrides: Any
) -> CsvImporterSettings:
    return CsvImporterSettings(
        nats_url=servers.nats_url, bus_prefix=bus_prefix, spool_dir=spool, **overrides
    )


@asynccontextmanager
async def importer_on(
    settings: CsvImporterSettings, nc: Client, js: JetStreamContext
) -> AsyncIterator[Importer]:
    app = create_app(settings, nats_client=nc)
    keys = ApiKeyStore(await js.key_value(settings.namespace.bucket(API_KEYS_BUCKET)))
    key = await keys.create(Role.SOURCE_WRITER, "tests")
    async with running(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(
            transport=transport, base_url="http://importer", timeout=30
        ) as client:
            yield Importer(client, settings, settings.namespace, js, keys, key)


@pytest.fixture
def start_importer(
    servers: Any, bus_prefix: str, nats_client: Client, jetstream: JetStreamContext, tmp_path: Path
) -> Any:
    """``async with start_importer(**settings) as imp:`` an importer with these settings."""

    def start(**overrides: Any) -> Any:
        settings = make_settings(servers, bus_prefix, tmp_path / "spool", **overrides)
        return importer_on(settings, nats_client, jetstream)

    return start
