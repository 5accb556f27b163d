"""HTTP producer → gateway-http → JetStream → classifier → writer-postgres → rows, as processes."""

from __future__ import annotations

import asyncio
import json
import subprocess
import sys
from collections.abc import Iterator
from datetime import UTC, datetime

import httpx
import nats
import pytest

from tests.e2e.conftest import fleet_for_test
from tests.e2e.fleet_process import ROOT, FleetProcess
from tests.e2e.rows import rows_for
from tributary_contracts import STREAM_CONFIGS_BUCKET, Namespace, StreamConfig, stream_config_key
from tributary_contracts.ports import SERVICE_PORTS

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

EXAMPLE = json.loads((ROOT / "deploy/local/example.json").read_text())
T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)


def body(source_id: str, points: list[dict[str, object]]) -> dict[str, object]:
    return {"source_id": source_id, "domain": "infrastructure", "data_points": points}


async def post(fleet: FleetProcess, payload: object, key: str | None = None) -> httpx.Response:
    headers = {"X-API-Key": key if key is not None else fleet.admin_key}
    async with httpx.AsyncClient(base_url=fleet.url("gateway-http"), timeout=10) as client:
        return await client.post("/ingest/data", json=payload, headers=headers)


async def test_the_readme_example_is_stored_with_its_class(fleet: FleetProcess) -> None:
    reply = await post(fleet, EXAMPLE)
    assert reply.status_code == 202, reply.text
    assert reply.json() == {"accepted": 1, "rejected": []}

    rows = await rows_for(fleet.postgres_dsn, "server-01", want=1)
    assert [(r["domain"], r["stream_id"], r["value"], r["cls"], r["time"]) for r in rows] == [
        ("infrastructure", "cpu_usage", 45.2, "normal", T0)
    ]
    assert json.loads(rows[0]["metadata"]) == {"core": 0}
    assert rows[0]["transport"] == "http" and rows[0]["sequence"] == 1


async def test_posting_the_same_request_again_adds_no_rows(fleet: FleetProcess) -> None:
    points = [
        {"stream_id": f"s{i}", "value": i, "timestamp": "2026-03-01T00:00:00Z"} for i in range(250)
    ]
    first = await post(fleet, body("dedup-src", points))
    assert first.status_code == 202 and first.json()["accepted"] == 250
    assert len(await rows_for(fleet.postgres_dsn, "dedup-src", want=250)) == 250

    again = await post(fleet, body("dedup-src", points))
    assert again.status_code == 202 and again.json()["accepted"] == 250
    # A later point from the same source proves the repeat had its chance to be written.
    marker = await post(fleet, body("dedup-src", [{"stream_id": "zz-marker", "value": 1}]))
    assert marker.status_code == 202
    rows = await rows_for(fleet.postgres_dsn, "dedup-src", want=251)
    assert len(rows) == 251


async def test_points_are_classified_by_the_live_stream_config(fleet: FleetProcess) -> None:
    config = StreamConfig.model_validate(
        {
            "value_constraints": {
                "min_value": 0,
                "max_value": 100,
                "operational_max": 80,
                "alert_max": 95,
            }
        }
    )
    nc = await nats.connect(fleet.nats_url)
    kv = await nc.jetstream().key_value(Namespace(fleet.bus_prefix).bucket(STREAM_CONFIGS_BUCKET))
    await kv.put(
        stream_config_key("infrastructure", "*", "cpu_usage"), config.model_dump_json().encode()
    )
    await nc.close()
    await asyncio.sleep(1.0)  # the classifier applies config changes from its KV watch

    values = {
        "2026-03-02T00:00:00Z": 50.0,
        "2026-03-02T00:00:01Z": 85.0,
        "2026-03-02T00:00:02Z": 97.0,
        "2026-03-02T00:00:03Z": 120.0,
    }
    points = [{"stream_id": "cpu_usage", "value": v, "timestamp": t} for t, v in values.items()]
    reply = await post(fleet, body("classified-src", points))
    assert reply.status_code == 202, reply.text

    rows = await rows_for(fleet.postgres_dsn, "classified-src", want=4)
    assert [(r["value"], r["cls"]) for r in rows] == [
        (50.0, "normal"),
        (85.0, "warning"),
        (97.0, "critical"),
        (120.0, "critical"),
    ]
    assert all(r["reason"] for r in rows)


@pytest.mark.parametrize(
    ("payload", "status", "names"),
    [
        (
            {"domain": "infrastructure", "data_points": [{"stream_id": "x", "value": 1}]},
            422,
            "source_id",
        ),
        (
            {"source_id": "s", "domain": "iot", "data_points": [{"stream_id": "x", "value": 1}]},
            422,
            "iot",
        ),
        ({"source_id": "s", "domain": "infrastructure", "data_points": "nope"}, 422, "data_points"),
    ],
)
async def test_malformed_bodies_get_a_4xx_naming_the_problem(
    fleet: FleetProcess, payload: dict[str, object], status: int, names: str
) -> None:
    reply = await post(fleet, payload)
    assert reply.status_code == status
    assert names in reply.text


async def test_requests_without_a_valid_key_are_refused(fleet: FleetProcess) -> None:
    assert (await post(fleet, EXAMPLE, key="")).status_code == 401
    assert (await post(fleet, EXAMPLE, key="trb_not-a-key")).status_code == 401


@pytest.fixture(scope="module")
def fleet_without_writer(servers: object) -> Iterator[FleetProcess]:
    yield from fleet_for_test(servers, skip=("writer-postgres",))


async def test_points_acknowledged_while_the_writer_is_down_are_stored_when_it_returns(
    fleet_without_writer: FleetProcess,
) -> None:
    fleet = fleet_without_writer
    points = [{"stream_id": "load", "value": i, "timestamp": 1_772_000_000 + i} for i in range(300)]
    for start in range(0, 300, 100):
        reply = await post(fleet, body("writer-down", points[start : start + 100]))
        assert reply.status_code == 202 and reply.json()["accepted"] == 100

    await asyncio.sleep(2.0)  # acknowledged, classified, waiting on the bus for a writer
    writer = subprocess.Popen(
        [sys.executable, "-m", "writer_postgres"],
        cwd=ROOT,
        text=True,
        env={
            **fleet.service_env(),
            "PORT": str(SERVICE_PORTS["writer-postgres"] + fleet.port_offset),
        },
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        rows = await rows_for(fleet.postgres_dsn, "writer-down", want=300, timeout=30)
    finally:
        writer.terminate()
        writer.wait(timeout=20)
    assert sorted(r["value"] for r in rows) == [float(i) for i in range(300)]


def test_fleet_runner_stops_cleanly_on_ctrl_c(servers: object) -> None:
    gen = fleet_for_test(servers)
    fleet = next(gen)
    assert fleet.stop() == 0
    assert any("fleet: stopped" in line for line in fleet.lines)
    gen.close()
