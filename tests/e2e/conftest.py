"""The e2e fleet: started once per module as real processes against the real servers."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Iterator

import pytest

from tests.e2e.fleet_process import FleetProcess
from tests.streams import drop_namespace_at


async def _drop_database(admin_dsn: str, dsn: str) -> None:
    import asyncpg

    conn = await asyncpg.connect(admin_dsn)
    await conn.execute(f'DROP DATABASE IF EXISTS "{dsn.rpartition("/")[2]}" WITH (FORCE)')
    await conn.close()


def fleet_for_test(
    servers: object, skip: tuple[str, ...] = (), env: dict[str, str] | None = None
) -> Iterator[FleetProcess]:
    prefix = f"e{uuid.uuid4().hex[:10]}"
    base = servers.postgres_dsn.rpartition("/")[0]  # type: ignore[attr-defined]
    fleet = FleetProcess(
        bus_prefix=prefix,
        postgres_dsn=f"{base}/e2e_{prefix}",
        nats_url=servers.nats_url,  # type: ignore[attr-defined]
        skip=skip,
        # A test fleet's MQTT session need not outlive it on the shared local broker.
        extra_env={"MQTT_SESSION_EXPIRY_SECONDS": "60", **(env or {})},
    )
    try:
        yield fleet.start()
    finally:
        fleet.stop()
        asyncio.run(drop_namespace_at(fleet.nats_url, prefix))
        asyncio.run(_drop_database(servers.postgres_dsn, fleet.postgres_dsn))  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def fleet(servers: object) -> Iterator[FleetProcess]:
    """The whole fleet, in its own bus namespace and its own database."""
    yield from fleet_for_test(servers)
