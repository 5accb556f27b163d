"""Fault scenarios: a known load through every transport while one fault is injected, then an
exact reconciliation against PostgreSQL (see ``reconcile.py`` for the rules).

The default run uses the short version (small loads, a few seconds each, PostgreSQL down 8 s);
``TRIBUTARY_FAULTS_LONG=1`` runs the long one (bigger loads, PostgreSQL down 30 s). Each scenario
appends its counts to ``.tributary/faults-report.jsonl``.
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from collections.abc import Awaitable, Callable

import httpx
import nats
import pytest

from tests.e2e.faults.conftest import PrivateServers, wait_ready
from tests.e2e.faults.load import Ledger, LoadPlan, run_load
from tests.e2e.faults.reconcile import Reconciliation, drain_and_reconcile
from tests.e2e.fleet_process import ROOT, FleetProcess
from tributary_contracts import DP_RAW, Namespace

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.faults]

LONG = os.environ.get("TRIBUTARY_FAULTS_LONG") == "1"
SCALE = 5 if LONG else 1
PG_OUTAGE_SECONDS = 30.0 if LONG else 8.0
REPORT = ROOT / ".tributary" / "faults-report.jsonl"

Fault = Callable[[], Awaitable[None]]


def plan(tag: str, **overrides: object) -> LoadPlan:
    base = LoadPlan(
        tag=tag,
        duration=6.0 * SCALE,
        http_requests=30 * SCALE,
        ws_messages=30 * SCALE,
        mqtt_messages=150 * SCALE,
        csv_jobs=3 * SCALE,
    )
    for name, value in overrides.items():
        setattr(base, name, value)
    return base


def record(
    name: str, result: Reconciliation, ledger: Ledger, seconds: float,
    fault_window: dict[str, int] | None = None,
) -> None:
    entry = {"scenario": name, "long": LONG, **result.counts, "seconds": round(seconds, 1),
             **(fault_window or {}), "per_transport": ledger.by_transport(),
             "events": ledger.events}  # fmt: skip
    print(f"\n{name}: {result.summary()} {fault_window or ''} {ledger.by_transport()} "
          f"events={ledger.events}")
    REPORT.parent.mkdir(exist_ok=True)
    with REPORT.open("a") as out:
        out.write(json.dumps(entry) + "\n")


async def run_scenario(
    name: str, fleet: FleetProcess, servers: PrivateServers, load: LoadPlan,
    fault: Fault | None, fault_at: float, *, allow_dlq: bool = False, drain_timeout: float = 90.0,
) -> tuple[Reconciliation, Ledger]:
    """Run ``load``; inject ``fault`` ``fault_at`` seconds in; drain; reconcile; assert."""
    started = time.monotonic()
    ledger = Ledger()
    task = asyncio.create_task(run_load(fleet, servers.mosquitto.port, load, ledger))
    window: dict[str, int] = {}
    if fault is not None:
        await asyncio.sleep(fault_at)
        deadline = time.monotonic() + 20  # a busy machine may be slow to the first acks
        while not ledger.acked and not task.done() and time.monotonic() < deadline:
            await asyncio.sleep(0.1)
        assert not task.done(), "the load ended before the fault: not mid-stream"
        window["acked_before_fault"] = len(ledger.acked)
        await fault()
        window["acked_during_fault"] = len(ledger.acked) - window["acked_before_fault"]
    await task
    if fault is not None:
        window["acked_after_fault"] = len(ledger.acked) - sum(window.values())
        assert window["acked_before_fault"] > 0, window  # mid-stream, not before it
    result = await drain_and_reconcile(
        ledger, load.sources, fleet.postgres_dsn, fleet.nats_url, fleet.bus_prefix,
        allow_dlq=allow_dlq, timeout=drain_timeout,
    )
    record(name, result, ledger, time.monotonic() - started, window)
    assert result.problems == []
    assert result.counts["duplicates"] == 0
    assert ledger.unresolved == set()
    assert ledger.acked, "nothing was acknowledged: the scenario proved nothing"
    for transport, counts in ledger.by_transport().items():
        assert counts["acked"] > 0, f"{transport}: nothing acknowledged"
    return result, ledger


# ------------------------------------------------------------------------- kill -9 of a service


def kill_service(fleet: FleetProcess, service: str) -> Fault:
    async def fault() -> None:
        pid = fleet.child_pids()[service]
        os.kill(pid, signal.SIGKILL)
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:  # fleet.py starts it again (after 1 s)
            new = fleet.child_pids().get(service)
            if new is not None and new != pid:
                break
            await asyncio.sleep(0.1)
        await asyncio.to_thread(wait_ready, fleet, service)

    return fault


@pytest.mark.parametrize(
    "service",
    ["gateway-http", "gateway-ws", "gateway-mqtt", "csv-importer", "classifier", "writer-postgres"],
)
async def test_kill_9_of_a_service_mid_stream_loses_and_duplicates_nothing(
    fleet: FleetProcess, private_servers: PrivateServers, service: str
) -> None:
    await run_scenario(
        f"kill-9 {service}", fleet, private_servers, plan(f"k{service[:4]}{service[-3:]}"),
        kill_service(fleet, service), fault_at=2.0 * SCALE,
    )


# ------------------------------------------------------------------------------ server faults


async def test_nats_server_restart_keeps_every_acknowledged_point(
    fleet: FleetProcess, private_servers: PrivateServers
) -> None:
    async def fault() -> None:
        await asyncio.to_thread(private_servers.nats.restart, 1.0)

    await run_scenario("nats-server restart", fleet, private_servers, plan("natsrestart"), fault,
                       fault_at=2.0 * SCALE)  # fmt: skip


async def test_postgres_outage_is_waited_out_and_drained_without_operator_action(
    fleet: FleetProcess, private_servers: PrivateServers
) -> None:
    breaker_opened: list[bool] = []

    async def fault() -> None:
        await asyncio.to_thread(private_servers.postgres.stop)
        outage_end = time.monotonic() + PG_OUTAGE_SECONDS
        async with httpx.AsyncClient(base_url=fleet.url("writer-postgres"), timeout=5) as client:
            while time.monotonic() < outage_end:
                metrics = (await client.get("/metrics")).text
                breaker_opened.append("writer_postgres_circuit_open 1.0" in metrics)
                await asyncio.sleep(0.5)
        await asyncio.to_thread(private_servers.postgres.start)

    await run_scenario(
        f"postgres down {PG_OUTAGE_SECONDS:.0f}s", fleet, private_servers,
        plan("pgdown", duration=max(PG_OUTAGE_SECONDS + 4, 6.0 * SCALE)),
        fault, fault_at=3.0, drain_timeout=120,
    )  # fmt: skip
    assert any(breaker_opened), "the writer's circuit breaker never opened during the outage"


async def test_mosquitto_restart_keeps_every_acknowledged_point(
    fleet: FleetProcess, private_servers: PrivateServers
) -> None:
    async def fault() -> None:
        await asyncio.to_thread(private_servers.mosquitto.restart, 1.0)

    await run_scenario("mosquitto restart", fleet, private_servers, plan("mqttrestart"), fault,
                       fault_at=2.0 * SCALE)  # fmt: skip


# ------------------------------------------------------------------------------ data faults


async def test_a_point_the_database_would_refuse_is_refused_at_the_gateway_not_dead_lettered(
    fleet: FleetProcess, private_servers: PrivateServers
) -> None:
    # A metadata string with \u0000 is valid JSON but jsonb refuses it: the point policy
    # (tributary_ingest.points) refuses it at the gateway with its reason, so nothing
    # acknowledged is dead-lettered later (issue 21, finding 4).
    result, ledger = await run_scenario(
        "poison batch", fleet, private_servers, plan("poison", poison_every=10), None, 0,
        allow_dlq=True,
    )
    nul_refusals = [r for r in ledger.refused.values() if "NUL character" in r]
    assert len(nul_refusals) == 3 * SCALE  # one per 10 HTTP requests
    assert result.counts["dead_lettered"] == 0
    assert result.counts["stored"] == result.counts["acked"]


async def lift_cap(js: object, stream: str) -> None:
    info = await js.stream_info(stream)  # type: ignore[attr-defined]
    if info.config.max_bytes not in (None, -1):
        await js.update_stream(config=info.config.__class__.from_response(  # type: ignore[attr-defined]
            {**info.config.as_dict(), "max_bytes": -1}))  # fmt: skip


async def test_a_full_raw_stream_makes_gateways_answer_503_not_2xx(
    fleet: FleetProcess, private_servers: PrivateServers
) -> None:
    """The operator caps DP_RAW at its current size (the cap is kept by every service's
    ensure_jetstream at restart); while it is full, gateways refuse (HTTP 503, WS error) and
    acknowledge nothing; CSV jobs wait (not completed) and MQTT messages wait in the broker;
    once the operator lifts the cap, those are stored — each exactly once."""
    nc = await nats.connect(fleet.nats_url)
    js = nc.jetstream()
    stream = Namespace(fleet.bus_prefix).stream(DP_RAW)
    try:
        info = await js.stream_info(stream)
        cap = info.state.bytes + 1_000  # less than one more batch: full from now on
        await js.update_stream(config=info.config.__class__.from_response(
            {**info.config.as_dict(), "max_bytes": cap}))  # fmt: skip
        # Service restarts re-run ensure_jetstream: the operator's cap must survive them.
        await kill_service(fleet, "gateway-http")()
        assert (await js.stream_info(stream)).config.max_bytes == cap

        ledger = Ledger()
        load = plan("full", retry_for=2.0, duration=3.0, http_requests=5, ws_messages=5,
                    mqtt_messages=60, csv_jobs=2)  # fmt: skip
        task = asyncio.create_task(run_load(fleet, private_servers.mosquitto.port, load, ledger))
        deadline = time.monotonic() + 120
        while not {"http", "ws"} <= ledger.done and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
        assert ledger.events.get("http_503", 0) > 0, ledger.events
        assert not ledger.acked & {k for k in ledger.sent if k[0].startswith(("http-", "ws-"))}
        assert any("503" in r for r in ledger.refused.values()), "HTTP refused nothing"
        assert any(k[0].startswith("ws-") and "unavailable" in r
                   for k, r in ledger.refused.items()), ledger.events  # fmt: skip
        # The operator lifts the cap: CSV jobs (retrying) and MQTT messages (waiting in the
        # broker) are acknowledged/stored now.
        await lift_cap(js, stream)
        await task
    finally:
        await lift_cap(js, stream)
        await nc.close()
    result = await drain_and_reconcile(
        ledger, load.sources, fleet.postgres_dsn, fleet.nats_url, fleet.bus_prefix, timeout=90
    )
    record("raw stream full", result, ledger, 0.0)
    assert result.problems == []
    assert result.counts["duplicates"] == 0
