"""The fleet the hostile scenarios attack: ``deploy/local/fleet.py`` as processes, with its
defaults, in its own bus namespace and database on the local NATS and PostgreSQL, and MQTT on a
private Mosquitto running the repository's configuration (as ``make run`` does), so the attacks
never touch the shared broker. Helpers drive it as a hostile or careless client would."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import asyncpg
import httpx
import pytest

from tests.e2e.conftest import _drop_database
from tests.e2e.faults.servers import PrivateMosquitto
from tests.e2e.fleet_process import FleetProcess
from tests.streams import drop_namespace_at

DOMAIN = "infrastructure"


@pytest.fixture(scope="session")
def broker() -> Iterator[PrivateMosquitto]:
    mosquitto = PrivateMosquitto()
    try:
        mosquitto.start()
        yield mosquitto
    finally:
        mosquitto.close()


@dataclass
class Target:
    """The running fleet and a key scoped to one source."""

    fleet: FleetProcess
    broker: PrivateMosquitto
    scoped_key: str  # source_writer of src-a in DOMAIN

    def url(self, service: str) -> str:
        return self.fleet.url(service)

    @property
    def dsn(self) -> str:
        return self.fleet.postgres_dsn

    async def post_data(
        self, source: str, points: list[Any] | bytes, key: str | None = None, **headers: str
    ) -> httpx.Response:
        body = (
            points
            if isinstance(points, bytes)
            else httpx.Request("POST", "/", json={"source_id": source, "domain": DOMAIN,
                                                 "data_points": points}).content
        )  # fmt: skip
        async with httpx.AsyncClient(base_url=self.url("gateway-http"), timeout=30) as client:
            return await client.post(
                "/ingest/data",
                content=body,
                headers={"X-API-Key": key or self.fleet.admin_key,
                         "Content-Type": "application/json", **headers},
            )  # fmt: skip

    async def upload_csv(
        self, content: bytes, key: str | None = None, **fields: str
    ) -> httpx.Response:
        async with httpx.AsyncClient(base_url=self.url("csv-importer"), timeout=60) as client:
            return await client.post(
                "/ingest/csv",
                headers={"X-API-Key": key or self.fleet.admin_key},
                files={"file": ("data.csv", content, "text/csv")},
                data={"domain": DOMAIN, **fields},
            )

    async def wait_job(self, job_id: str, timeout: float = 120.0) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        async with httpx.AsyncClient(base_url=self.url("csv-importer"), timeout=10) as client:
            while time.monotonic() < deadline:
                job = (
                    await client.get(
                        f"/ingest/csv/jobs/{job_id}", headers={"X-API-Key": self.fleet.admin_key}
                    )
                ).json()
                if job["status"] in ("completed", "failed", "cancelled"):
                    return dict(job)
                await asyncio.sleep(0.2)
        raise AssertionError(f"job {job_id} did not finish: {job}")

    async def query(self, sql: str, *args: Any) -> list[asyncpg.Record]:
        conn = await asyncpg.connect(self.dsn)
        try:
            return list(await conn.fetch(sql, *args))
        finally:
            await conn.close()


async def _scoped_key(fleet: FleetProcess) -> str:
    async with httpx.AsyncClient(base_url=fleet.url("gateway-http"), timeout=10) as client:
        reply = await client.post(
            "/keys",
            headers={"X-API-Key": fleet.admin_key},
            json={"role": "source_writer", "name": "hostile", "source_ids": ["src-a"],
                  "domains": [DOMAIN]},
        )  # fmt: skip
    assert reply.status_code == 201, reply.text
    return str(reply.json()["key"])


@pytest.fixture(scope="module")
def target(servers: Any, broker: PrivateMosquitto) -> Iterator[Target]:
    prefix = f"h{uuid.uuid4().hex[:10]}"
    base = servers.postgres_dsn.rpartition("/")[0]
    fleet = FleetProcess(
        bus_prefix=prefix,
        postgres_dsn=f"{base}/hostile_{prefix}",
        nats_url=servers.nats_url,
        extra_env={
            "MQTT_URL": broker.url,
            "TRIBUTARY_MQTT_DIR": str(broker.dir),
            "MQTT_SESSION_EXPIRY_SECONDS": "600",
            "UPLOAD_IDLE_TIMEOUT_SECONDS": "2",
            "HTTP_HEADER_TIMEOUT_SECONDS": "2",
        },
    )
    try:
        fleet.start()
        yield Target(fleet, broker, asyncio.run(_scoped_key(fleet)))
    finally:
        fleet.stop()
        asyncio.run(drop_namespace_at(fleet.nats_url, prefix))
        asyncio.run(_drop_database(servers.postgres_dsn, fleet.postgres_dsn))
