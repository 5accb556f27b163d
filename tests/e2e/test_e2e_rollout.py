"""The staged-rollout tools against the whole fleet, as processes (issue 18):

- a refused point of each transport (HTTP, WS, MQTT, CSV) is a row of ``ingest_rejects``;
- seed 003's mixed-format rollout: legacy firmware sends ticks over MQTT, new firmware mm over
  HTTP; the stored values stay raw, ``data_points_unified`` and the seed's example queries give
  the unified series; the canary devices' raw inputs are in the raw ledger;
- a canary of 10 % of 200 sources with a changed config: shadow verdicts, the agreement report,
  then promote and roll back, each changing live classification without a restart.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, TypeVar

import asyncpg
import httpx
import nats
import pytest
import websockets

from tests.e2e.conftest import fleet_for_test
from tests.e2e.fleet_process import ROOT, FleetProcess
from tests.e2e.test_e2e_mqtt import mosquitto_pub, wait_mqtt_ready
from tributary_contracts import (
    STREAM_CONFIGS_BUCKET,
    Namespace,
    StreamConfig,
    canary_bucket,
    stream_config_key,
)
from writer_postgres.readside import named_queries

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

T = TypeVar("T")
NOW = datetime.now(UTC).replace(microsecond=0)


@pytest.fixture(scope="module")
def fleet(servers: object) -> Iterator[FleetProcess]:
    yield from fleet_for_test(servers, extra_env={"RAW_LEDGER": "machines/*"})


async def until(check: Callable[[], Awaitable[T | None]], what: str, timeout: float = 30) -> T:
    """``check()``'s first truthy result, polled (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        result = await check()
        if result:
            return result
        await asyncio.sleep(0.2)
    raise AssertionError(f"timed out waiting for {what}")


async def fetch(dsn: str, query: str, *args: object) -> list[asyncpg.Record]:
    conn = await asyncpg.connect(dsn)
    try:
        return await conn.fetch(query, *args)
    except asyncpg.UndefinedTableError:
        return []
    finally:
        await conn.close()


async def post(
    fleet: FleetProcess, source: str, domain: str, points: list[dict[str, Any]]
) -> httpx.Response:
    async with httpx.AsyncClient(base_url=fleet.url("gateway-http"), timeout=10) as client:
        return await client.post(
            "/ingest/data",
            headers={"X-API-Key": fleet.admin_key},
            json={"source_id": source, "domain": domain, "data_points": points},
        )


def cli(
    fleet: FleetProcess, *args: str, stdin: str | None = None
) -> subprocess.CompletedProcess[str]:
    env = {
        **os.environ,
        "NATS_URL": fleet.nats_url,
        "BUS_PREFIX": fleet.bus_prefix,
        "POSTGRES_DSN": fleet.postgres_dsn,
    }
    return subprocess.run(
        [sys.executable, "-m", "tributary_operator.cli", *args],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
        input=stdin,
        cwd=ROOT,
    )


# -- every reject kept ---------------------------------------------------------------------------
async def test_a_refused_point_of_each_transport_is_a_row_of_ingest_rejects(
    fleet: FleetProcess,
) -> None:
    reply = await post(
        fleet,
        "rej-http",
        "infrastructure",
        [{"stream_id": "cpu", "value": 1}, {"stream_id": "cpu2", "value": "high"}],
    )
    assert reply.status_code == 202, reply.text

    ws_url = fleet.url("gateway-ws").replace("http://", "ws://") + "/ingest/stream"
    async with websockets.connect(ws_url, open_timeout=10) as ws:
        await ws.send(
            json.dumps(
                {
                    "type": "connect",
                    "source_id": "rej-ws",
                    "domain": "infrastructure",
                    "api_key": fleet.admin_key,
                }
            )
        )
        await asyncio.wait_for(ws.recv(), 10)
        await ws.send(
            json.dumps(
                {
                    "type": "data",
                    "batch": [
                        {"stream_id": "cpu", "value": 1, "sequence": 1},
                        {"stream_id": "cpu2", "value": "high", "sequence": 2},
                    ],
                }
            )
        )
        ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert ack["type"] == "ack" and len(ack["rejected"]) == 1

    await wait_mqtt_ready(fleet)
    mosquitto_pub(fleet, "infrastructure/rej-mqtt/cpu/data", '{"value": "high"}')

    async with httpx.AsyncClient(base_url=fleet.url("csv-importer"), timeout=30) as client:
        upload = await client.post(
            "/ingest/csv",
            headers={"X-API-Key": fleet.admin_key},
            files={
                "file": ("d.csv", b"timestamp,cpu\n1772000000,1\n1772000001,high\n", "text/csv")
            },
            data={"domain": "infrastructure", "source_id": "rej-csv", "value_columns": "cpu"},
        )
    assert upload.status_code == 202, upload.text

    async def four() -> list[asyncpg.Record] | None:
        rows = await fetch(
            fleet.postgres_dsn,
            "SELECT transport, domain, source_id, stream_id,"
            " reason, payload_excerpt FROM ingest_rejects ORDER BY transport",
        )
        return rows if {r["transport"] for r in rows} == {"csv", "http", "mqtt", "ws"} else None

    rows = await until(four, "a reject row of every transport")
    by_transport = {r["transport"]: r for r in rows}
    assert {t: (r["domain"], r["source_id"]) for t, r in by_transport.items()} == {
        "csv": ("infrastructure", "rej-csv"),
        "http": ("infrastructure", "rej-http"),
        "mqtt": ("infrastructure", "rej-mqtt"),
        "ws": ("infrastructure", "rej-ws"),
    }
    for transport, row in by_transport.items():
        assert row["reason"], transport
        assert "high" in (row["payload_excerpt"] or "") or "high" in row["reason"], transport
    assert by_transport["http"]["stream_id"] == "cpu2"


# -- mixed formats (seed 003) ---------------------------------------------------------------------
async def test_ticks_and_mm_from_both_firmwares_unify_at_read_time(fleet: FleetProcess) -> None:
    conn = await asyncpg.connect(fleet.postgres_dsn)
    try:
        await conn.execute(
            "INSERT INTO stream_units (domain, stream_id, unit)"
            " VALUES ('machines', 'platform_extension', 'ticks');"
            "INSERT INTO calibrations (domain, stream_id, from_unit, to_unit, scale)"
            " VALUES ('machines', 'platform_extension', 'ticks', 'mm', 0.05)"
        )
    finally:
        await conn.close()
    t = [(NOW - timedelta(minutes=10) + timedelta(seconds=i)).isoformat() for i in range(6)]
    await wait_mqtt_ready(fleet)
    # Legacy firmware over MQTT: ticks, no unit. dev-mixed upgrades between its two points.
    mosquitto_pub(
        fleet,
        "machines/dev-old/platform_extension/data",
        json.dumps({"value": -40, "timestamp": t[0]}),
    )
    mosquitto_pub(
        fleet,
        "machines/dev-old/platform_extension/data",
        json.dumps({"value": 60, "timestamp": t[1]}),
    )
    mosquitto_pub(
        fleet,
        "machines/dev-mixed/platform_extension/data",
        json.dumps({"value": 100, "timestamp": t[2]}),
    )
    # New firmware over HTTP: mm, said in the point's metadata.
    new = {"stream_id": "platform_extension", "metadata": {"unit": "mm"}}
    assert (
        await post(fleet, "dev-mixed", "machines", [{**new, "value": -2.5, "timestamp": t[3]}])
    ).status_code == 202
    assert (
        await post(
            fleet,
            "dev-new",
            "machines",
            [{**new, "value": 1.0, "timestamp": t[4]}, {**new, "value": "bad", "timestamp": t[5]}],
        )
    ).status_code == 202

    async def stored() -> list[asyncpg.Record] | None:
        rows = await fetch(
            fleet.postgres_dsn, "SELECT source_id, value FROM data_points WHERE domain = 'machines'"
        )
        return rows if len(rows) == 5 else None

    await until(stored, "the five points of both firmwares")
    args = ("machines", "platform_extension", NOW - timedelta(hours=1))
    q = named_queries("mixed_formats")
    counts = await fetch(fleet.postgres_dsn, q["legacy_vs_new_counts"], *args)
    assert [(r["unit_raw"], r["points"], r["sources"]) for r in counts] == [
        ("mm", 2, 2),
        ("ticks", 3, 2),
    ]
    both = await fetch(fleet.postgres_dsn, q["sources_with_both_formats"], *args)
    assert [(r["source_id"], r["units"]) for r in both] == [("dev-mixed", ["mm", "ticks"])]
    recent = await fetch(fleet.postgres_dsn, q["unified_recent_rows"], *args)
    assert [
        (r["source_id"], r["value_raw"], r["value"], r["unit"], r["transport"]) for r in recent
    ] == [
        ("dev-new", 1.0, 1.0, "mm", "http"),
        ("dev-mixed", -2.5, -2.5, "mm", "http"),
        ("dev-mixed", 100.0, 5.0, "mm", "mqtt"),
        ("dev-old", 60.0, 3.0, "mm", "mqtt"),
        ("dev-old", -40.0, -2.0, "mm", "mqtt"),
    ]
    switches = await fetch(fleet.postgres_dsn, q["left_right_switches"], *args)
    assert [(r["source_id"], r["switches"], r["to_right"], r["to_left"]) for r in switches] == [
        ("dev-mixed", 1, 0, 1),
        ("dev-old", 1, 1, 0),
    ]
    raw = await fetch(
        fleet.postgres_dsn,
        "SELECT value FROM data_points WHERE source_id = 'dev-old' ORDER BY time",
    )
    assert [r["value"] for r in raw] == [-40.0, 60.0]  # never rewritten

    # Every input of the canary domain is in the raw ledger (RAW_LEDGER=machines/*), HTTP and
    # MQTT, with the points and the errors that came of it.
    async def ledger() -> list[asyncpg.Record] | None:
        rows = await fetch(
            fleet.postgres_dsn,
            "SELECT transport, source_id, status, points_published, points_stored, errors,"
            " error_reasons, payload_text FROM ingest_parse ORDER BY transport, time",
        )
        return rows if len(rows) == 5 else None

    parsed = await until(ledger, "five raw records")
    assert [
        (
            r["transport"],
            r["source_id"],
            r["status"],
            r["points_published"],
            r["points_stored"],
            r["errors"],
        )
        for r in parsed
    ] == [
        ("http", "dev-mixed", 202, 1, 1, 0),
        ("http", "dev-new", 202, 1, 1, 1),
        ("mqtt", "dev-old", None, 1, 1, 0),
        ("mqtt", "dev-old", None, 1, 1, 0),
        ("mqtt", "dev-mixed", None, 1, 1, 0),
    ]
    assert '"bad"' in parsed[1]["payload_text"] and parsed[1]["error_reasons"]
    assert json.loads(parsed[2]["payload_text"]) == {"value": -40, "timestamp": t[0]}


# -- canary ----------------------------------------------------------------------------------------
SOURCES = [f"sensor-{i:03d}" for i in range(200)]
CANARY = [s for s in SOURCES if canary_bucket(s) < 1000]  # what 10 % selects


async def put_live_config(fleet: FleetProcess) -> None:
    nc = await nats.connect(fleet.nats_url)
    try:
        kv = await nc.jetstream().key_value(
            Namespace(fleet.bus_prefix).bucket(STREAM_CONFIGS_BUCKET)
        )
        live = StreamConfig.model_validate({"value_constraints": {"warning_max": 80}})
        await kv.put(stream_config_key("canary", "*", "cpu"), live.model_dump_json().encode())
    finally:
        await nc.close()


async def probe(fleet: FleetProcess, source: str, value: float, expect: str) -> bool:
    """Send one point now; whether it was stored with class ``expect`` (bounded wait)."""
    ts = datetime.now(UTC).isoformat()
    reply = await post(
        fleet,
        source,
        "canary",
        [{"stream_id": "probe", "value": value, "timestamp": ts, "stream_type": "cpu"}],
    )
    assert reply.status_code == 202, reply.text

    async def row() -> list[asyncpg.Record] | None:
        return (
            await fetch(
                fleet.postgres_dsn,
                "SELECT cls FROM data_points WHERE domain ="
                " 'canary' AND source_id = $1 AND stream_id = 'probe' AND time = $2",
                source,
                datetime.fromisoformat(ts),
            )
            or None
        )

    [stored] = await until(row, f"the probe of {source}")
    return bool(stored["cls"] == expect)


async def until_probe(fleet: FleetProcess, source: str, value: float, expect: str) -> None:
    """Probe until the classifier has taken the rollout change in (it applies it live)."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if await probe(fleet, source, value, expect):
            return
    raise AssertionError(f"{source} never classified {value} as {expect}")


async def test_a_canary_of_10_percent_of_200_sources_compares_promotes_and_rolls_back(
    fleet: FleetProcess, tmp_path: Path
) -> None:
    assert 10 <= len(CANARY) <= 30
    await put_live_config(fleet)
    candidate = tmp_path / "cpu-60.json"
    candidate.write_text(json.dumps({"value_constraints": {"warning_max": 60}}))
    started = cli(
        fleet,
        "rollout",
        "start",
        "cpu-60",
        "--domain",
        "canary",
        "--percent",
        "10",
        "--config",
        f"cpu={candidate}",
        "--note",
        "warning from 60 instead of 80",
    )
    assert started.returncode == 0, started.stderr

    # Once a canary source's probe has its shadow verdict, the classifier has the rollout.
    async def shadowed() -> bool:
        assert await probe(fleet, CANARY[0], 50, "normal")  # the live config decides
        return bool(
            await fetch(
                fleet.postgres_dsn, "SELECT 1 FROM rollout_verdicts WHERE source_id = $1", CANARY[0]
            )
        )

    await until(shadowed, "the classifier to apply the rollout")

    t0 = NOW - timedelta(minutes=30)
    for source in SOURCES:
        reply = await post(
            fleet,
            source,
            "canary",
            [
                {
                    "stream_id": "cpu",
                    "stream_type": "cpu",
                    "value": 50,
                    "timestamp": t0.isoformat(),
                },
                {
                    "stream_id": "cpu",
                    "stream_type": "cpu",
                    "value": 70,
                    "timestamp": (t0 + timedelta(seconds=1)).isoformat(),
                },
            ],
        )
        assert reply.status_code == 202, reply.text

    async def verdicts() -> list[asyncpg.Record] | None:
        rows = await fetch(
            fleet.postgres_dsn,
            "SELECT source_id, count(*) AS n FROM rollout_verdicts WHERE stream_id = 'cpu'"
            " GROUP BY source_id ORDER BY source_id",
        )
        return rows if sum(r["n"] for r in rows) >= 2 * len(CANARY) else None

    got = await until(verdicts, "both shadow verdicts of every canary source")
    assert [(r["source_id"], r["n"]) for r in got] == [(s, 2) for s in sorted(CANARY)]

    async def all_stored() -> list[asyncpg.Record] | None:
        rows = await fetch(
            fleet.postgres_dsn,
            "SELECT cls, count(*) AS n FROM data_points"
            " WHERE domain = 'canary' AND stream_id = 'cpu' GROUP BY cls",
        )
        return rows if sum(r["n"] for r in rows) >= 400 else None

    stored = await until(all_stored, "the 400 points of the 200 sources")
    assert {r["cls"]: r["n"] for r in stored} == {"normal": 400}  # the live config decided

    report = cli(fleet, "rollout", "report", "cpu-60", "--json", "--limit", "100")
    assert report.returncode == 0, report.stderr
    result = json.loads(report.stdout)
    # One row: stream type cpu (the probes have it too), shadow state.
    [row] = [r for r in result["agreement"] if r["stream_type"] == "cpu"]
    assert (row["state"], row["sources"]) == ("shadow", len(CANARY))
    assert row["disagree"] == len(CANARY)  # 70: normal live, warning with the candidate
    assert row["agree"] == row["points"] - len(CANARY) > len(CANARY)  # 50s and probes agree
    assert row["agreement_pct"] == round(100 * row["agree"] / row["points"], 2)
    cpu_disagreements = [d for d in result["disagreements"] if d["stream_id"] == "cpu"]
    assert len(cpu_disagreements) == len(CANARY)
    assert {(d["value"], d["live_cls"], d["shadow_cls"]) for d in cpu_disagreements} == {
        (70.0, "normal", "warning")
    }
    text = cli(fleet, "rollout", "report", "cpu-60")
    assert "agreement per stream type" in text.stdout and "cpu" in text.stdout

    # Promote: the candidate decides for the canary sources, live and at once.
    promoted = cli(fleet, "rollout", "promote", "cpu-60")
    assert promoted.returncode == 0, promoted.stderr
    await until_probe(fleet, CANARY[0], 70, "warning")
    outside = next(s for s in SOURCES if s not in CANARY)
    assert await probe(fleet, outside, 70, "normal")

    # Roll back: the live config decides again, nothing is compared any more.
    rolled_back = cli(fleet, "rollout", "rollback", "cpu-60")
    assert rolled_back.returncode == 0, rolled_back.stderr
    await until_probe(fleet, CANARY[0], 70, "normal")
    listing = cli(fleet, "rollout", "list")
    assert "cpu-60" in listing.stdout and "rolled_back" in listing.stdout
