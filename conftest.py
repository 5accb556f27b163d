"""Fixtures shared by every test: where the real servers are, and a fresh namespace per test.

Integration and e2e tests talk to real servers. When a Docker engine is reachable, testcontainers
starts NATS and PostgreSQL for the session; otherwise the running local servers are used
(``NATS_URL``, ``POSTGRES_DSN``, defaults on 127.0.0.1). Each test gets its own bus prefix
(subjects, streams, buckets) and its own database, so runs never collide.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

import pytest


@dataclass(frozen=True)
class Servers:
    nats_url: str
    postgres_dsn: str  # DSN of a maintenance database (we create one database per test)


def _docker_reachable() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def servers() -> Iterator[Servers]:
    if os.environ.get("TRIBUTARY_TESTCONTAINERS", "auto") != "off" and _docker_reachable():
        from testcontainers.nats import NatsContainer
        from testcontainers.postgres import PostgresContainer

        with (
            NatsContainer("nats:2.10").with_command("-js") as nats_c,
            PostgresContainer("timescale/timescaledb:latest-pg16", driver=None) as pg_c,
        ):
            yield Servers(nats_c.nats_uri(), pg_c.get_connection_url())
        return
    yield Servers(
        os.environ.get("NATS_URL", "nats://127.0.0.1:4222"),
        os.environ.get("POSTGRES_DSN_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"),
    )


@pytest.fixture
def bus_prefix() -> str:
    """A namespace prefix no other test uses."""
    return f"t{uuid.uuid4().hex[:10]}"


@pytest.fixture
async def nats_client(servers: Servers) -> AsyncIterator[object]:
    import nats

    nc = await nats.connect(servers.nats_url)
    yield nc
    await nc.close()


@pytest.fixture
async def jetstream(nats_client: object, bus_prefix: str) -> AsyncIterator[object]:
    """JetStream with this test's namespace created; its streams are deleted afterwards."""
    from tributary_contracts import Namespace, ensure_jetstream
    from tributary_contracts.jetstream import BUCKETS, STREAMS

    js = nats_client.jetstream()  # type: ignore[attr-defined]
    ns = Namespace(bus_prefix)
    await ensure_jetstream(js, ns)
    yield js
    for stream in STREAMS:
        await js.delete_stream(ns.stream(stream.base))
    for base, _, _ in BUCKETS:
        await js.delete_key_value(ns.bucket(base))


@pytest.fixture
async def database_dsn(servers: Servers) -> AsyncIterator[str]:
    """DSN of a database that does not exist yet (writers create it) and is dropped afterwards."""
    import asyncpg

    name = f"t_{uuid.uuid4().hex[:12]}"
    base, _, _ = servers.postgres_dsn.rpartition("/")
    yield f"{base}/{name}"
    conn = await asyncpg.connect(servers.postgres_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture
def read_stream(jetstream: object, bus_prefix: str) -> object:
    """``await read_stream(DP_RAW)``: the messages on this test's namespaced stream."""
    from tests.streams import StoredMessage, stored_messages
    from tributary_contracts import Namespace

    async def read(base: str) -> list[StoredMessage]:
        return await stored_messages(jetstream, Namespace(bus_prefix).stream(base))

    return read


@pytest.fixture
def read_batches(jetstream: object, bus_prefix: str) -> object:
    """``await read_batches()``: the ``PointBatch``es in this test's raw stream, out of their
    bundles (``tests.streams.RawBatch``: subject, bundle id, partition, batch)."""
    from tests.streams import RawBatch, raw_batches
    from tributary_contracts import Namespace

    async def read() -> list[RawBatch]:
        return await raw_batches(jetstream, Namespace(bus_prefix))

    return read
