"""Fixtures of the fault scenarios: private servers (started once per session, brought back up
before each test) and a fleet per test on them; the soak is opt-in.

The soak (``@pytest.mark.soak``) runs only with ``TRIBUTARY_SOAK=1`` or when ``-m`` names it
(``pytest -m soak tests/e2e/faults``); the default run skips it.
"""

from __future__ import annotations

import os
import time
import urllib.request
import uuid
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from tests.e2e.faults.servers import PrivateMosquitto, PrivateNats, PrivatePostgres
from tests.e2e.fleet_process import FleetProcess


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    if os.environ.get("TRIBUTARY_SOAK") == "1" or "soak" in (config.option.markexpr or ""):
        return
    skip = pytest.mark.skip(reason="soak is opt-in: TRIBUTARY_SOAK=1 or pytest -m soak")
    for item in items:
        if "soak" in item.keywords:
            item.add_marker(skip)


@dataclass
class PrivateServers:
    nats: PrivateNats
    postgres: PrivatePostgres
    mosquitto: PrivateMosquitto

    def ensure_up(self) -> None:
        """A scenario that failed half-way may have left a server down: start it again."""
        if self.nats.proc is None or self.nats.proc.poll() is not None:
            self.nats.start()
        if self.mosquitto.proc is None or self.mosquitto.proc.poll() is not None:
            self.mosquitto.start()
        if not (self.postgres.data / "postmaster.pid").exists():
            self.postgres.start()


@pytest.fixture(scope="session")
def private_servers() -> Iterator[PrivateServers]:
    nats_server, postgres, mosquitto = PrivateNats(), PrivatePostgres(), PrivateMosquitto()
    try:
        nats_server.start()
        postgres.init()
        mosquitto.start()
        yield PrivateServers(nats_server, postgres, mosquitto)
    finally:
        for server in (mosquitto, postgres, nats_server):
            server.close()


def start_fleet(servers: PrivateServers, extra_env: dict[str, str] | None = None) -> FleetProcess:
    prefix = f"f{uuid.uuid4().hex[:10]}"
    base = servers.postgres.admin_dsn.rpartition("/")[0]
    fleet = FleetProcess(
        bus_prefix=prefix,
        postgres_dsn=f"{base}/faults_{prefix}",
        nats_url=servers.nats.url,
        extra_env={
            "MQTT_URL": servers.mosquitto.url,
            "TRIBUTARY_MQTT_DIR": str(servers.mosquitto.dir),  # fleet.py makes its gateway user
            "LOG_LEVEL": "WARNING",
            # The writer's redeliveries reach MAX_DELIVER within ~7 s instead of ~4 min: a
            # PostgreSQL outage of 8 s would dead-letter acknowledged points unless the writer
            # stops fetching (its circuit breaker); faster drains after every fault too.
            "NAK_BACKOFF_SECONDS": "0.2",
            "NAK_BACKOFF_MAX_SECONDS": "1",
            **(extra_env or {}),
        },
    )
    fleet.start()
    wait_ready(fleet, "gateway-mqtt")  # subscribed: its broker session queues from now on
    return fleet


def wait_ready(fleet: FleetProcess, service: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(fleet.url(service) + "/ready", timeout=2) as reply:
                if reply.status == 200:
                    return
        except OSError:
            pass
        time.sleep(0.2)
    raise AssertionError(f"{service} not ready within {timeout}s")


@pytest.fixture(scope="module")
def fleet(private_servers: PrivateServers) -> Iterator[FleetProcess]:
    """The whole fleet on the private servers, in its own namespace and database, shared by
    the scenarios of a module (starting six services takes 10–45 s on this busy machine); each
    scenario has its own source ids and reconciles only those."""
    private_servers.ensure_up()
    fleet = start_fleet(private_servers)
    try:
        yield fleet
    finally:
        fleet.stop()


SERVICES = ("writer-postgres", "classifier", "gateway-http", "gateway-ws", "csv-importer",
            "gateway-mqtt")  # fmt: skip


@pytest.fixture(autouse=True)
def servers_and_fleet_up(request: pytest.FixtureRequest) -> Iterator[None]:
    """Before each scenario: every private server running and every service ready again (a
    previous scenario may have failed half-way through its fault)."""
    if "fleet" in request.fixturenames:
        request.getfixturevalue("private_servers").ensure_up()
        fleet = request.getfixturevalue("fleet")
        for service in SERVICES:
            wait_ready(fleet, service, timeout=60)
    yield

