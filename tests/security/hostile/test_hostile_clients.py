"""Hostile and careless clients against the real fleet (issue 21): one scenario per finding, each
the attack as it was made, asserting what the fleet answers and stores.

Finding 7 (classifier memory under many new stream ids) belongs to the classifier's own work.
The auth-failure scenarios (8, 9) run last, in that order: 9 uses up 127.0.0.1's budget of failed
authentications on gateway-http.
"""

from __future__ import annotations

import asyncio
import gzip
import json
import os
import re
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx
import paho.mqtt.client as paho
import pytest
import websockets
from paho.mqtt.packettypes import PacketTypes
from paho.mqtt.properties import Properties

from tests import mqtt
from tests.e2e.faults.servers import free_port
from tests.e2e.fleet_process import ROOT
from tests.e2e.rows import rows_for
from tests.security.hostile.conftest import DOMAIN, Target

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

OLD = 1_767_225_600  # 2026-01-01T00:00:00Z: backfill for any run after it


async def wait_mqtt_ready(target: Target, timeout: float = 30.0) -> None:
    async with httpx.AsyncClient(base_url=target.url("gateway-mqtt"), timeout=2) as client:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if (await client.get("/ready")).status_code == 200:
                return
            await asyncio.sleep(0.2)
    raise AssertionError("gateway-mqtt not ready")


def publish_all(login: mqtt.MqttLogin, messages: list[tuple[str, bytes]], **client: Any) -> None:
    """Publish at QoS 1 and wait for every PUBACK."""
    c = login.client(**client)
    login.connect(c)
    c.loop_start()
    try:
        infos = [c.publish(topic, payload, qos=1) for topic, payload in messages]
        for info in infos:
            info.wait_for_publish(timeout=30)
            assert info.is_published()
    finally:
        c.disconnect()
        c.loop_stop()


# ---------------------------------------------------------------- 1. scope bypass through CSV

LONG = b"timestamp,stream_id,value,source_id\n1772053200,cpu,1.5,src-b\n"


@pytest.mark.parametrize(
    ("content", "fields"),
    [
        (LONG, {}),
        (
            b"1772053200,cpu,1.5,src-b\n",
            {"header": "false", "columns": "timestamp,stream_id,value,source_id"},
        ),
        (b"\xef\xbb\xbf" + LONG, {}),
        (b"timestamp,stream_id,value, source_id\n1772053200,cpu,1.5,src-b\n", {}),
    ],
    ids=["header", "columns", "bom", "spaced"],
)
async def test_1_a_scoped_key_cannot_store_another_source_through_a_csv_source_column(
    target: Target, content: bytes, fields: dict[str, str]
) -> None:
    reply = await target.upload_csv(content, target.scoped_key, source_id="src-a", **fields)

    assert reply.status_code == 403, reply.text
    assert "source_id column" in reply.json()["error"]


# ---------------------------------------- 2. acknowledged MQTT messages lost by the queue limit


def test_2_the_broker_servers_sh_starts_keeps_a_burst_queued_for_the_gateway() -> None:
    """The broker as ``make run`` starts it (``servers.sh``, on a private port): 5,000 QoS 1
    messages PUBACKed while the gateway's session is offline are all delivered to it
    (Mosquitto's default queue of 1000 dropped the rest)."""
    # Under /tmp, not pytest's tmp_path: mosquitto drops root and must reach its directory.
    port, directory = free_port(), Path(tempfile.mkdtemp(prefix="hostile-mqtt-"))
    env = {**os.environ, "TRIBUTARY_MQTT_PORT": str(port), "TRIBUTARY_MQTT_DIR": str(directory)}
    subprocess.run(["bash", str(ROOT / "deploy/local/servers.sh")], env=env, check=True,
                   timeout=120)  # fmt: skip
    try:
        at = (port, directory)
        gateway = mqtt.gateway("burst-gateway", "burst", at=at)
        producer = mqtt.producer("burst", at=at)
        received: list[int] = []

        def session() -> Any:
            c = gateway.client(protocol=paho.MQTTv5)
            c.on_message = lambda _c, _u, m: received.append(int(m.payload))
            props = Properties(PacketTypes.CONNECT)  # type: ignore[no-untyped-call]
            props.SessionExpiryInterval = 300
            c.connect(gateway.host, port, clean_start=False, properties=props)
            c.loop_start()
            return c

        c = session()
        c.subscribe("burst/#", qos=1)
        time.sleep(0.5)
        c.disconnect()
        c.loop_stop()

        publish_all(producer, [(f"burst/{DOMAIN}/s/x/data", str(n).encode()) for n in range(5000)])

        c = session()
        deadline = time.monotonic() + 60
        while len(set(received)) < 5000 and time.monotonic() < deadline:
            time.sleep(0.1)
        c.disconnect()
        c.loop_stop()
        assert sorted(set(received)) == list(range(5000))
    finally:
        pid = (directory / "mosquitto.pid").read_text().strip()
        os.kill(int(pid), 15)
        shutil.rmtree(directory, ignore_errors=True)


# -------------------------------------------------- 3. anonymous MQTT, ACLs, session takeover


async def test_3_mqtt_needs_credentials_keeps_producers_to_their_topics_and_sessions_safe(
    target: Target,
) -> None:
    await wait_mqtt_ready(target)
    prefix, at = target.fleet.bus_prefix, target.broker.at
    anonymous = mqtt.MqttLogin(target.broker.port)
    refused: list[Any] = []
    c = anonymous.client()
    c.on_connect = lambda _c, _u, _f, reason, _p: refused.append(reason)
    anonymous.connect(c)
    deadline = time.monotonic() + 10
    while not refused and time.monotonic() < deadline:
        c.loop(timeout=0.1)
    c.disconnect()
    assert refused and refused[0].is_failure  # not authorised

    scoped = mqtt.user(f"scoped-{prefix}", "producer", prefix, at=at, sources=("src-a",),
                       domains=(DOMAIN,))  # fmt: skip
    # Outside its scope: another source, a legacy sensor of someone else's device. The broker
    # drops them (MQTT 3.1.1 cannot say so); its own topic goes through.
    await asyncio.to_thread(publish_all, scoped, [
        (f"{prefix}/{DOMAIN}/src-b/cpu/data", b'{"value": 1}'),
        (f"{prefix}/iot/sensors/17/readings", b'{"value": 999}'),
        (f"{prefix}/{DOMAIN}/src-a/cpu/data", b'{"value": 2}'),
    ])  # fmt: skip
    assert [r["value"] for r in await rows_for(target.dsn, "src-a", want=1)] == [2.0]

    # A producer connecting under the gateway's client id gets its own session, not the
    # gateway's: every point published meanwhile is stored.
    gateway_id = f"tributary-gateway-mqtt-{prefix}"
    thief = scoped.client(gateway_id, clean_session=False)
    scoped.connect(thief)
    thief.loop_start()
    thief.subscribe(f"{prefix}/#", qos=1)
    try:
        producer = mqtt.producer(prefix, at=at)
        topic = f"{prefix}/{DOMAIN}/takeover/cpu/data"
        points = [
            (topic, json.dumps({"value": n, "timestamp": OLD + n}).encode()) for n in range(300)
        ]
        await asyncio.to_thread(publish_all, producer, points)
        rows = await rows_for(target.dsn, "takeover", want=300, timeout=60)
    finally:
        thief.disconnect()
        thief.loop_stop()
    assert sorted(r["value"] for r in rows) == [float(n) for n in range(300)]
    assert await rows_for(target.dsn, "src-b", want=1, timeout=0.5) == []
    assert await rows_for(target.dsn, "sensor-17", want=1, timeout=0.5) == []


# ------------------------------------------------------- 4. NUL accepted, then dead-lettered


async def test_4_a_nul_in_metadata_is_refused_at_the_gateway_not_dead_lettered(
    target: Target,
) -> None:
    reply = await target.post_data("nul-http", [
        {"stream_id": "a", "value": 1, "timestamp": OLD, "metadata": {"note": "x\u0000y"}},
        {"stream_id": "b", "value": 2, "timestamp": OLD, "metadata": {"k\u0000": 1}},
        {"stream_id": "ok", "value": 3, "timestamp": OLD},
    ])  # fmt: skip
    await wait_mqtt_ready(target)
    prefix = target.fleet.bus_prefix
    await asyncio.to_thread(publish_all, mqtt.producer(prefix, at=target.broker.at), [
        (f"{prefix}/{DOMAIN}/nul-mqtt/a/data",
         json.dumps({"value": 1, "metadata": {"note": "x\u0000y"}}).encode()),
        (f"{prefix}/{DOMAIN}/nul-mqtt/ok/data", json.dumps({"value": 3}).encode()),
    ])  # fmt: skip

    assert reply.status_code == 202
    assert reply.json()["accepted"] == 1
    assert ["NUL character" in r["reason"] for r in reply.json()["rejected"]] == [True, True]
    assert [r["stream_id"] for r in await rows_for(target.dsn, "nul-http", want=1)] == ["ok"]
    assert [r["stream_id"] for r in await rows_for(target.dsn, "nul-mqtt", want=1)] == ["ok"]
    dead = await target.query(
        "SELECT count(*) AS n FROM data_points WHERE source_id IN ('nul-http', 'nul-mqtt')"
    )
    assert dead[0]["n"] == 2


# ------------------------------------------------ 5. a lone surrogate takes good points down


async def test_5_a_lone_surrogate_is_one_rejected_point_on_http_and_websocket(
    target: Target,
) -> None:
    body = (
        b'{"source_id": "sur-http", "domain": "infrastructure", "data_points": ['
        b'{"stream_id": "\\ud800", "value": 1, "timestamp": 1767225600}, '
        b'{"stream_id": "ok", "value": 2, "timestamp": 1767225600}]}'
    )
    reply = await target.post_data("sur-http", body)

    url = target.url("gateway-ws").replace("http://", "ws://") + "/ingest/stream"
    async with websockets.connect(url, open_timeout=10) as ws:
        await ws.send(json.dumps({"type": "connect", "source_id": "sur-ws", "domain": DOMAIN,
                                  "api_key": target.fleet.admin_key}))  # fmt: skip
        assert json.loads(await ws.recv())["type"] == "connected"
        await ws.send('{"type": "data", "batch": [{"stream_id": "\\udc80", "value": 1, '
                      '"timestamp": 1767225600}, {"stream_id": "a", "value": 2, '
                      '"timestamp": 1767225600}]}')  # fmt: skip
        first = json.loads(await ws.recv())
        await ws.send(json.dumps({"type": "data", "batch": [
            {"stream_id": "b", "value": 3, "timestamp": OLD}]}))  # fmt: skip
        second = json.loads(await ws.recv())

    assert reply.status_code == 202, reply.text
    assert reply.json()["accepted"] == 1
    assert "surrogate" in reply.json()["rejected"][0]["reason"]
    assert (first["type"], first["accepted"], second["type"]) == ("ack", 1, "ack")
    assert [r["stream_id"] for r in await rows_for(target.dsn, "sur-http", want=1)] == ["ok"]
    assert [r["stream_id"] for r in await rows_for(target.dsn, "sur-ws", want=2)] == ["a", "b"]


# ------------------------------------------------------------- 6. CSV budgets per point


async def test_6_a_csv_import_spends_its_sources_backfill_budget_per_point(
    target: Target,
) -> None:
    rows = 30_000  # above the default backfill burst of 20,000 points
    content = "timestamp,v\n" + "".join(f"{OLD + n},{n}\n" for n in range(rows))

    reply = await target.upload_csv(content.encode(), source_id="csv-budget")
    job = await target.wait_job(reply.json()["job_id"], timeout=300)

    assert job["status"] == "completed"
    assert job["points_published"] == rows
    async with httpx.AsyncClient(base_url=target.url("csv-importer")) as client:
        metrics = (await client.get("/metrics")).text
    waited = re.search(r"^csv_importer_budget_wait_seconds_total (\S+)$", metrics, re.M)
    assert waited is not None and float(waited.group(1)) > 0
    assert len(await rows_for(target.dsn, "csv-budget", want=rows, timeout=180)) == rows


# ---------------------------------------------------- 10. values changed without a word


async def test_10_the_point_policy_refuses_what_would_change_on_the_way_with_a_reason(
    target: Target,
) -> None:
    points = (
        b'{"source_id": "policy", "domain": "infrastructure", "data_points": ['
        b'{"stream_id": "nan-meta", "value": 1, "timestamp": 1767225600, "metadata": {"x": NaN}},'
        b'{"stream_id": "dup", "value": 1, "value": 2, "timestamp": 1767225600},'
        b'{"stream_id": "big", "value": 9007199254740993, "timestamp": 1767225600},'
        b'{"stream_id": "cafe\\u0301", "value": 1, "timestamp": 1767225600},'
        b'{"stream_id": "week", "value": 1, "timestamp": "2026-W01-4T00:00:00Z"},'
        b'{"stream_id": "day", "value": 1, "timestamp": "2026-01-01"},'
        b'{"stream_id": "=HYPERLINK(1)", "value": 1, "timestamp": 1767225600},'
        b'{"stream_id": "ok", "value": 1, "timestamp": 1767225600}]}'
    )
    reply = await target.post_data("policy", points)
    blank = await target.post_data("   ", [{"stream_id": "a", "value": 1}])
    csv_reply = await target.upload_csv(
        b"timestamp,stream_id,value\n1767225600,=cmd|' /C calc'!A0,1\n1767225600,ok,2\n",
        source_id="policy-csv",
    )
    gz = await target.upload_csv(gzip.compress(b"timestamp,v\n1,2\n"), source_id="policy-gz")
    wide = await target.upload_csv(
        ("timestamp," + ",".join(f"c{i}" for i in range(20_000)) + "\n1,2\n").encode(),
        source_id="policy-wide",
    )
    stalled = await stalled_upload(target)
    unfinished = await unfinished_headers(target)

    assert reply.status_code == 202, reply.text
    reasons = {r["stream_id"]: r["reason"] for r in reply.json()["rejected"]}
    assert [r["index"] for r in reply.json()["rejected"]] == [0, 1, 2, 3, 4, 5, 6]
    assert "finite" in reasons["nan-meta"]
    assert "more than once" in reasons["dup"]
    assert "exactly representable" in reasons["big"]
    assert "NFC" in reasons["cafe\u0301"]
    assert "calendar date" in reasons["week"] and "calendar date" in reasons["day"]
    assert "formula" in reasons["=HYPERLINK(1)"]
    assert (blank.status_code, "blank" in blank.text) == (422, True)
    job = await target.wait_job(csv_reply.json()["job_id"])
    assert [e["reason"] for e in job["errors"]] == [
        "stream_id must not start with '=', '+' or '@' (a spreadsheet formula)"
    ]
    assert (gz.status_code, "gzip-compressed" in gz.json()["error"]) == (422, True)
    assert (wide.status_code, "columns; at most 1000" in wide.json()["error"]) == (422, True)
    assert stalled.startswith(b"HTTP/1.1 408"), stalled[:200]
    assert unfinished == b""  # closed by the server, no request ever reached the app
    assert [r["stream_id"] for r in await rows_for(target.dsn, "policy", want=1)] == ["ok"]
    assert [r["stream_id"] for r in await rows_for(target.dsn, "policy-csv", want=1)] == ["ok"]


async def stalled_upload(target: Target) -> bytes:
    """An upload whose body stops half-way (the fleet runs UPLOAD_IDLE_TIMEOUT_SECONDS=2)."""
    port = int(target.url("csv-importer").rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    body = (b'--b\r\nContent-Disposition: form-data; name="domain"\r\n\r\ninfrastructure\r\n'
            b'--b\r\nContent-Disposition: form-data; name="file"; filename="x.csv"\r\n\r\n'
            b"timestamp,v\n1,2\n")  # fmt: skip
    writer.write(
        b"POST /ingest/csv HTTP/1.1\r\nHost: x\r\nX-API-Key: "
        + target.fleet.admin_key.encode()
        + b"\r\nContent-Type: multipart/form-data; boundary=b\r\nContent-Length: 100000\r\n\r\n"
        + body
    )
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(4096), 30)
    finally:
        writer.close()


# ------------------------------------------ 8. unauthenticated writes to the audit trail


async def test_8_a_flood_of_bad_keys_writes_a_bounded_number_of_audit_events(
    target: Target,
) -> None:
    before = len(await audit_rows(target, "auth_failed", want=0))
    async with httpx.AsyncClient(base_url=target.url("csv-importer"), timeout=10) as client:
        for n in range(300):
            await client.get("/ingest/csv/jobs", headers={"X-API-Key": f"trb_{n:012d}_{'y' * 43}"})
        # An audited change after the flood: once it is stored, so is whatever came before.
    async with httpx.AsyncClient(base_url=target.url("gateway-http"), timeout=10) as client:
        made = await client.post("/keys", headers={"X-API-Key": target.fleet.admin_key},
                                 json={"role": "read_only", "name": "marker"})  # fmt: skip
    assert made.status_code == 201, made.text
    await audit_rows(target, "key_created", want=2)

    after = len(await audit_rows(target, "auth_failed", want=0))
    assert after - before <= 2  # the first refusal, and at most one "… and N more" per window


async def unfinished_headers(target: Target) -> bytes:
    """A request whose headers never finish (the fleet runs HTTP_HEADER_TIMEOUT_SECONDS=2): what
    the server sends before it closes the connection."""
    port = int(target.url("gateway-http").rsplit(":", 1)[1])
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    writer.write(b"POST /ingest/data HTTP/1.1\r\nHost: x\r\nX-Slow: ")
    await writer.drain()
    try:
        return await asyncio.wait_for(reader.read(4096), 30)
    finally:
        writer.close()


# ------------------------------------------- 9. spoofable and unreachable per-IP limits


async def test_9_forwarded_for_is_not_believed_and_failed_keys_reach_a_per_ip_limit(
    target: Target,
) -> None:
    statuses = []
    for n in range(40):
        reply = await target.post_data(
            "src-a", [{"stream_id": "a", "value": 1}], key=f"trb_{n:012d}_{'x' * 43}",
            **{"X-Forwarded-For": f"10.9.{n}.1"},
        )  # fmt: skip
        statuses.append(reply.status_code)

    assert statuses[0] == 401
    assert 429 in statuses  # the budget is 127.0.0.1's, whatever X-Forwarded-For says
    rows = await audit_rows(target, "auth_failed", want=1)
    assert {r["client_ip"] for r in rows} == {"127.0.0.1"}


async def audit_rows(target: Target, action: str, want: int, timeout: float = 30.0) -> list[Any]:
    deadline = time.monotonic() + timeout
    rows: list[Any] = []
    while time.monotonic() < deadline:
        try:
            rows = await target.query(
                "SELECT * FROM ingestion_audit_log WHERE event = $1 ORDER BY time", action
            )
        except Exception:
            rows = []
        if len(rows) >= want:
            return rows
        await asyncio.sleep(0.2)
    return rows
