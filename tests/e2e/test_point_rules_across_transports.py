"""One table of bad inputs, fed to HTTP, WebSocket, MQTT and CSV: every transport refuses each
with the same reason (the shared point rules, ``tributary_ingest.points``).

Each transport is read where its contract puts a refusal: gateway-http's reply body, gateway-ws's
``ack``/``error`` frame, the ``ingest_rejects`` row of a refused MQTT message (``dp.rejected.mqtt``
stored by writer-postgres), and the csv-importer job's ``errors`` (or its 422 reply for form
fields). A case a transport cannot express (a JSON ``NaN`` literal in a CSV cell, a point without
a stream id on an MQTT topic) is left out of that transport only.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import asyncpg
import httpx
import pytest
import websockets

from tests.e2e.conftest import fleet_for_test
from tests.e2e.fleet_process import FleetProcess
from tests.e2e.test_e2e_csv import job_when
from tests.e2e.test_e2e_mqtt import mosquitto_pub, wait_mqtt_ready

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

GOOD_TS = "2026-03-01T00:00:00Z"
MISSING = object()
PATTERN = "^[a-z][a-z0-9_-]{0,31}$"


@dataclass(frozen=True)
class Case:
    """One bad point: ``fields`` change a good point ``{"stream_id": "c<i>", "value": 1.5}``."""

    name: str
    fields: dict[str, Any]
    reason: str
    csv: bool = True  # CSV text can say it
    mqtt: bool = True  # an MQTT topic + payload can say it
    extra: dict[str, Any] = field(default_factory=dict)


CASES = [
    Case(
        "formula_id",
        {"stream_id": "=cmd"},
        "stream_id must not start with '=', '+' or '@' (a spreadsheet formula)",
    ),
    Case("long_id", {"stream_id": "s" * 257}, "stream_id must be at most 256 characters, got 257"),
    Case("missing_id", {"stream_id": MISSING}, "stream_id is required", mqtt=False),
    Case("missing_value", {"value": MISSING}, "value is required"),
    Case(
        "nan_literal", {"value": float("nan")}, "value must be a finite number, got NaN", csv=False
    ),
    Case(
        "inf_literal",
        {"value": float("inf")},
        "value must be a finite number, got Infinity",
        csv=False,
    ),
    Case("nan_text", {"value": "NaN"}, "value must be a finite number, got 'NaN'"),
    Case("inf_text", {"value": "inf"}, "value must be a finite number, got 'inf'"),
    Case("not_a_number", {"value": "high"}, "value must be a number, got the text 'high'"),
    Case(
        "inexact_integer",
        {"value": 2**53 + 1},
        "value 9007199254740993 is not exactly representable as a double-precision number "
        "(integers beyond 2^53 would be rounded); send it as a float",
    ),
    Case(
        "bad_timestamp",
        {"timestamp": "yesterday"},
        "timestamp 'yesterday' is not ISO 8601 (e.g. 2026-02-25T21:00:00Z) or epoch seconds",
    ),
    Case(
        "bare_date",
        {"timestamp": "2026-03-01"},
        "timestamp '2026-03-01' is not a calendar date with a time of day (a bare date, week or "
        "ordinal date is refused, not taken as midnight); e.g. 2026-02-25T21:00:00Z",
    ),
    Case(
        "far_future_iso",
        {"timestamp": "2200-01-01T00:00:00Z"},
        "timestamp '2200-01-01T00:00:00Z' is outside the accepted range 1900–2100",
    ),
    Case(
        "far_future_epoch",
        {"timestamp": 4_200_000_000},
        "timestamp 4200000000 is outside the accepted range for epoch seconds (1900–2100)",
    ),
    Case(
        "ancient_iso",
        {"timestamp": "1850-01-01T00:00:00Z"},
        "timestamp '1850-01-01T00:00:00Z' is outside the accepted range 1900–2100",
    ),
]

# JSON only: CSV cells are text and carry no metadata, sequence or stream type.
CASES += [
    Case("boolean_value", {"value": True}, "value must be a number, got a boolean", csv=False),
    Case(
        "metadata_array",
        {"metadata": [1]},
        "metadata must be an object, got an array",
        csv=False,
    ),
    Case(
        "metadata_nan",
        {"metadata": {"x": float("nan")}},
        "metadata values must be finite numbers (NaN/Infinity would be stored as null)",
        csv=False,
    ),
    Case(
        "sequence_text", {"sequence": "7"}, "sequence must be an integer, got a string", csv=False
    ),
    Case(
        "stream_type_formula",
        {"stream_type": "@sum"},
        "stream_type must not start with '=', '+' or '@' (a spreadsheet formula)",
        csv=False,
    ),
]

ENVELOPE_CASES = [
    # (field, bad value, reason): a request/session/topic/upload-wide field
    (
        "domain",
        "Infra",
        f"domain must match {PATTERN} (lower case, e.g. infrastructure), got 'Infra'",
    ),
    (
        "source_id",
        "=src",
        "source_id must not start with '=', '+' or '@' (a spreadsheet formula)",
    ),
    ("source_id", "s" * 300, "source_id must be at most 256 characters, got 300"),
]


def point(index: int, case: Case) -> dict[str, Any]:
    raw: dict[str, Any] = {"stream_id": f"c{index}", "value": 1.5, **case.fields}
    return {k: v for k, v in raw.items() if v is not MISSING}


def expected(cases: list[Case]) -> dict[str, str]:
    return {case.name: case.reason for case in cases}


@pytest.fixture(scope="module")
def fleet(servers: object) -> Iterator[FleetProcess]:
    yield from fleet_for_test(servers)


# -- HTTP: the reply body -------------------------------------------------------------------------
async def post(fleet: FleetProcess, body: dict[str, Any]) -> httpx.Response:
    async with httpx.AsyncClient(base_url=fleet.url("gateway-http"), timeout=10) as client:
        return await client.post(
            "/ingest/data",
            content=json.dumps(body),  # NaN/Infinity literals, as Python's json writes them
            headers={"X-API-Key": fleet.admin_key, "Content-Type": "application/json"},
        )


async def http_reasons(fleet: FleetProcess) -> dict[str, str]:
    points = [point(i, case) for i, case in enumerate(CASES)]
    reply = await post(
        fleet, {"source_id": "rules-http", "domain": "infrastructure", "data_points": points}
    )
    assert reply.status_code == 422, reply.text
    rejected = reply.json()["rejected"]
    assert [r["index"] for r in rejected] == list(range(len(CASES)))
    return {CASES[r["index"]].name: r["reason"] for r in rejected}


async def http_envelope(fleet: FleetProcess, name: str, value: str) -> str:
    body = {
        "source_id": "rules-http",
        "domain": "infrastructure",
        "data_points": [point(0, CASES[0])],
    }
    reply = await post(fleet, {**body, name: value})
    assert reply.status_code == 422 and reply.json()["field"] == name, reply.text
    return str(reply.json()["error"])


# -- WebSocket: the ack / error frame -------------------------------------------------------------
def ws_url(fleet: FleetProcess) -> str:
    return fleet.url("gateway-ws").replace("http://", "ws://") + "/ingest/stream"


async def ws_connect(ws: Any, fleet: FleetProcess, **fields: str) -> dict[str, Any]:
    connect = {"type": "connect", "source_id": "rules-ws", "domain": "infrastructure"}
    await ws.send(json.dumps({**connect, "api_key": fleet.admin_key, **fields}))
    return dict(json.loads(await asyncio.wait_for(ws.recv(), 10)))


async def ws_reasons(fleet: FleetProcess) -> dict[str, str]:
    async with websockets.connect(ws_url(fleet), open_timeout=10) as ws:
        assert (await ws_connect(ws, fleet))["type"] == "connected"
        batch = [point(i, case) for i, case in enumerate(CASES)]
        await ws.send(json.dumps({"type": "data", "batch": batch}))
        ack = json.loads(await asyncio.wait_for(ws.recv(), 10))
    assert ack["type"] == "ack" and ack["accepted"] == 0, ack
    return {CASES[r["index"]].name: r["reason"] for r in ack["rejected"]}


async def ws_envelope(fleet: FleetProcess, name: str, value: str) -> str:
    async with websockets.connect(ws_url(fleet), open_timeout=10) as ws:
        error = await ws_connect(ws, fleet, **{name: value})
    assert error["type"] == "error" and error["code"] == "bad_connect", error
    return str(error["reason"])


# -- MQTT: the ingest_rejects row of dp.rejected.mqtt ---------------------------------------------
def mqtt_topic(domain: str, source_id: str, stream_id: str) -> str:
    return f"{domain}/{source_id}/{stream_id}/data"


async def mqtt_rejects(fleet: FleetProcess, topics: list[str]) -> dict[str, str]:
    """The reason stored for each topic (as published under the fleet's prefix)."""
    deadline = time.monotonic() + 30
    found: dict[str, str] = {}
    while time.monotonic() < deadline:
        conn = await asyncpg.connect(fleet.postgres_dsn)
        try:
            rows = await conn.fetch(
                "SELECT topic, reason FROM ingest_rejects WHERE transport = 'mqtt'"
            )
        except asyncpg.UndefinedTableError:
            rows = []
        finally:
            await conn.close()
        found = {r["topic"].removeprefix(f"{fleet.bus_prefix}/"): r["reason"] for r in rows}
        if all(t in found for t in topics):
            return {t: found[t] for t in topics}
        await asyncio.sleep(0.3)
    raise AssertionError(f"no ingest_rejects row for {set(topics) - set(found)}")


async def mqtt_reasons(fleet: FleetProcess) -> dict[str, str]:
    await wait_mqtt_ready(fleet)
    topics: dict[str, str] = {}
    for i, case in enumerate(CASES):
        if not case.mqtt:
            continue
        raw = point(i, case)
        topic = mqtt_topic("infrastructure", "rules-mqtt", raw.pop("stream_id"))
        topics[case.name] = topic
        mosquitto_pub(fleet, topic, json.dumps(raw))
    stored = await mqtt_rejects(fleet, list(topics.values()))
    return {name: stored[topic] for name, topic in topics.items()}


def mqtt_envelope_topic(name: str, value: str) -> str:
    ids = {"domain": "infrastructure", "source_id": "rules-mqtt", **{name: value}}
    return mqtt_topic(ids["domain"], ids["source_id"], f"env-{name}-{len(value)}")


# -- CSV: the job's errors, the upload's 422 ------------------------------------------------------
def csv_cell(value: Any) -> str:
    if value is MISSING:
        return ""
    return value if isinstance(value, str) else json.dumps(value)


async def csv_upload(fleet: FleetProcess, text: str, **fields: str) -> httpx.Response:
    async with httpx.AsyncClient(base_url=fleet.url("csv-importer"), timeout=60) as client:
        return await client.post(
            "/ingest/csv",
            files={"file": ("rules.csv", text.encode(), "text/csv")},
            data={"domain": "infrastructure", "source_id": "rules-csv", **fields},
            headers={"X-API-Key": fleet.admin_key},
        )


async def csv_reasons(fleet: FleetProcess) -> dict[str, str]:
    cases = [case for case in CASES if case.csv]
    lines = ["timestamp,stream_id,value"]
    for i, case in enumerate(cases):
        raw = {"stream_id": f"c{i}", "value": 1.5, "timestamp": GOOD_TS, **case.fields}
        lines.append(",".join(csv_cell(raw[k]) for k in ("timestamp", "stream_id", "value")))
    reply = await csv_upload(fleet, "\n".join(lines) + "\n")
    assert reply.status_code == 202, reply.text
    job = await job_when(fleet, str(reply.json()["job_id"]))
    assert job["status"] == "completed" and job["points_published"] == 0, job.get("reason")
    # Line 1 is the header: case i is on line i + 2.
    return {cases[e["row"] - 2].name: e["reason"] for e in job["errors"]}


async def csv_envelope(fleet: FleetProcess, name: str, value: str) -> str:
    reply = await csv_upload(
        fleet, f"timestamp,stream_id,value\n{GOOD_TS},c0,1.5\n", **{name: value}
    )
    assert reply.status_code == 422 and reply.json()["field"] == name, reply.text
    return str(reply.json()["error"])


# -- the table ------------------------------------------------------------------------------------
async def test_every_transport_refuses_each_bad_point_with_the_same_reason(
    fleet: FleetProcess,
) -> None:
    assert await http_reasons(fleet) == expected(CASES)
    assert await ws_reasons(fleet) == expected(CASES)
    assert await mqtt_reasons(fleet) == expected([c for c in CASES if c.mqtt])
    assert await csv_reasons(fleet) == expected([c for c in CASES if c.csv])


async def test_every_transport_refuses_a_bad_domain_or_source_with_the_same_reason(
    fleet: FleetProcess,
) -> None:
    await wait_mqtt_ready(fleet)
    topics = []
    for name, value, _ in ENVELOPE_CASES:
        topics.append(mqtt_envelope_topic(name, value))
        mosquitto_pub(fleet, topics[-1], '{"value": 1.5}')
    stored = await mqtt_rejects(fleet, topics)

    for (name, value, reason), topic in zip(ENVELOPE_CASES, topics, strict=True):
        seen = {
            "http": await http_envelope(fleet, name, value),
            "ws": await ws_envelope(fleet, name, value),
            "mqtt": stored[topic],
            "csv": await csv_envelope(fleet, name, value),
        }
        assert seen == dict.fromkeys(seen, reason), (name, value)
