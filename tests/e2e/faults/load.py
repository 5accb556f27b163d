"""A load of known points through every transport, recording exactly what each producer was told.

Every point has its own idempotency key ``(source_id, stream_id, ts)`` and ``value`` = its number
``n`` (``ts = BASE_TS + n`` seconds), so the reconciliation can tell each one apart. The producers
behave like real clients: what was neither acknowledged nor refused is sent again (bounded), so at
the end each point is in exactly one of

- ``acked``: the transport's acknowledgement — HTTP 2xx (minus its ``rejected`` list), WebSocket
  ``ack`` (or a resume's ``last_sequence``), the broker's MQTT QoS 1 PUBACK, CSV job completed;
- ``refused``: refused with a reason (a per-point rejection, or a definitive HTTP/WS/CSV refusal
  once the retry budget is spent);
- ``unresolved``: no answer within the retry budget (the reconciliation allows it to be stored
  at most once, and the scenarios expect none).

Every loop is bounded by a count and a deadline.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any

import httpx
import websockets

from tests import mqtt
from tests.e2e.faults.servers import PRIVATE_BROKERS
from tests.e2e.fleet_process import FleetProcess

BASE_TS = 1_780_000_000  # 2026-05-28: inside the writer's partitions (or its default one)
DOMAIN = "infrastructure"
Key = tuple[str, str, int]  # (source_id, stream_id, epoch seconds)


@dataclass
class Ledger:
    """What every producer sent and was told."""

    sent: dict[Key, float] = field(default_factory=dict)  # key → value
    acked: set[Key] = field(default_factory=set)
    refused: dict[Key, str] = field(default_factory=dict)
    events: dict[str, int] = field(default_factory=dict)  # e.g. "http_503" → count
    done: set[str] = field(default_factory=set)  # transports whose producer has finished

    def send(self, key: Key, value: float) -> None:
        self.sent[key] = value

    def ack(self, key: Key) -> None:
        self.refused.pop(key, None)
        self.acked.add(key)

    def refuse(self, key: Key, reason: str) -> None:
        assert reason, "a refusal must carry a reason"
        if key not in self.acked:
            self.refused[key] = reason

    def event(self, name: str) -> None:
        self.events[name] = self.events.get(name, 0) + 1

    @property
    def unresolved(self) -> set[Key]:
        return set(self.sent) - self.acked - set(self.refused)

    def by_transport(self) -> dict[str, dict[str, int]]:
        out: dict[str, dict[str, int]] = {}
        for key in self.sent:
            row = out.setdefault(key[0].split("-")[0], {"sent": 0, "acked": 0, "refused": 0})
            row["sent"] += 1
            row["acked"] += key in self.acked
            row["refused"] += key in self.refused
        return out


@dataclass
class LoadPlan:
    """How much each transport sends, and at what pace."""

    tag: str  # unique per scenario: part of every source id
    duration: float = 6.0  # seconds over which the points are spread
    http_requests: int = 30
    http_batch: int = 20
    ws_messages: int = 30
    ws_batch: int = 20
    mqtt_messages: int = 200
    csv_jobs: int = 3
    csv_rows: int = 200  # rows per job, two value columns each
    retry_for: float = 60.0  # how long a producer keeps retrying one unanswered send
    csv_job_wait: float = 90.0  # how long an accepted CSV job is waited for (jobs are durable)
    invalid_every: int = 10  # every n-th HTTP/WS request carries one invalid point (0: none)
    poison_every: int = 0  # every n-th HTTP request carries one point the database refuses
    transports: tuple[str, ...] = ("http", "ws", "mqtt", "csv")

    def source(self, transport: str) -> str:
        return f"{transport}-{self.tag}"

    @property
    def sources(self) -> list[str]:
        return [self.source(t) for t in self.transports]


def _point(n: int, streams: int = 4) -> dict[str, Any]:
    return {"stream_id": f"s{n % streams}", "value": float(n), "timestamp": BASE_TS + n,
            "sequence": n}  # fmt: skip


def _value(point: dict[str, Any]) -> float:
    """The value a stored row would have (NaN for an invalid one, which must not be stored)."""
    value = point["value"]
    return float(value) if isinstance(value, int | float) else float("nan")


def _key(source: str, point: dict[str, Any]) -> Key:
    return (source, point["stream_id"], int(point["timestamp"]))


# ---------------------------------------------------------------------------------------- HTTP


async def run_http(fleet: FleetProcess, plan: LoadPlan, ledger: Ledger) -> None:
    """``http_requests`` POSTs of ``http_batch`` points; 503/connection errors are retried."""
    source = plan.source("http")
    interval = plan.duration / max(plan.http_requests, 1)
    started = time.monotonic()
    n = 0
    async with httpx.AsyncClient(base_url=fleet.url("gateway-http"), timeout=15) as client:
        for i in range(plan.http_requests):
            await _pace(started + i * interval)
            points = [_point(n + j) for j in range(plan.http_batch)]
            n += plan.http_batch
            invalid: int | None = None
            if plan.invalid_every and i % plan.invalid_every == 0:
                invalid = len(points) - 1
                points[invalid] = {**points[invalid], "value": "not-a-number"}
            if plan.poison_every and i % plan.poison_every == 1:
                points[0] = {**points[0], "metadata": {"note": "poison\u0000byte"}}
            for p in points:
                ledger.send(_key(source, p), _value(p))
            await _post_until_answered(client, fleet, source, points, plan, ledger)


async def _post_until_answered(
    client: httpx.AsyncClient, fleet: FleetProcess, source: str, points: list[dict[str, Any]],
    plan: LoadPlan, ledger: Ledger,
) -> None:
    body = {"source_id": source, "domain": DOMAIN, "data_points": points}
    deadline = time.monotonic() + plan.retry_for
    last = "no answer"
    for _attempt in range(10_000):
        if time.monotonic() > deadline:
            break
        try:
            reply = await client.post(
                "/ingest/data", json=body, headers={"X-API-Key": fleet.admin_key}
            )
        except httpx.TransportError as exc:
            ledger.event("http_transport_error")
            last = f"transport error: {type(exc).__name__}"
            await asyncio.sleep(0.2)
            continue
        if 200 <= reply.status_code < 300:
            answer = reply.json()
            rejected = {r["index"]: r["reason"] for r in answer["rejected"]}
            for index, p in enumerate(points):
                if index in rejected:
                    ledger.refuse(_key(source, p), f"HTTP {reply.status_code}: {rejected[index]}")
                else:
                    ledger.ack(_key(source, p))
            assert answer["accepted"] == len(points) - len(rejected), answer
            return
        ledger.event(f"http_{reply.status_code}")
        last = f"HTTP {reply.status_code}: {reply.text[:200]}"
        if reply.status_code < 500 and reply.status_code != 429:
            break  # the client's mistake: retrying cannot help
        retry_after = float(reply.headers.get("Retry-After", "0.5") or 0.5)
        await asyncio.sleep(min(retry_after, 1.0))
    for p in points:
        ledger.refuse(_key(source, p), last)


# ----------------------------------------------------------------------------------- WebSocket


async def run_ws(fleet: FleetProcess, plan: LoadPlan, ledger: Ledger) -> None:
    """One session sending ``ws_messages`` batches (sequence = point number); on a dropped
    connection it reconnects with ``resume`` and resends every batch not explicitly acked."""
    source = plan.source("ws")
    url = fleet.url("gateway-ws").replace("http://", "ws://") + "/ingest/stream"
    messages: list[list[dict[str, Any]]] = []
    for i in range(plan.ws_messages):
        batch = [_point(i * plan.ws_batch + j) for j in range(plan.ws_batch)]
        if plan.invalid_every and i % plan.invalid_every == 0:
            batch[-1] = {**batch[-1], "value": None}
        messages.append(batch)
    hello = {"type": "connect", "source_id": source, "domain": DOMAIN,
             "api_key": fleet.admin_key}  # fmt: skip
    interval = plan.duration / max(plan.ws_messages, 1)
    started = time.monotonic()
    deadline = started + plan.duration + plan.retry_for
    next_index = 0  # first message not yet acknowledged
    resume = False
    last_error = "no answer"
    for _attempt in range(1_000):
        if next_index >= len(messages) or time.monotonic() > deadline:
            break
        try:
            next_index = await _ws_session(
                url, hello, resume, messages, next_index, source, ledger, started, interval
            )
        except (OSError, websockets.WebSocketException, TimeoutError, _WsRefused) as exc:
            ledger.event(f"ws_{type(exc).__name__}")
            last_error = f"websocket: {exc}"[:300]
            await asyncio.sleep(0.3)
        resume = True
    for message in messages[next_index:]:
        for p in message:
            ledger.refuse(_key(source, p), last_error)


class _WsRefused(Exception):
    """The gateway answered a data message with an error (e.g. bus unavailable)."""


async def _ws_session(
    url: str, hello: dict[str, Any], resume: bool, messages: list[list[dict[str, Any]]],
    first: int, source: str, ledger: Ledger, started: float, interval: float,
) -> int:
    """Send from message ``first`` on; return the index of the first unacknowledged message."""
    async with websockets.connect(url, open_timeout=5, ping_interval=None) as ws:
        await ws.send(json.dumps({**hello, "resume": resume}))
        connected = json.loads(await asyncio.wait_for(ws.recv(), 10))
        if connected.get("type") != "connected":
            raise _WsRefused(str(connected))
        if resume:
            # Everything after the last explicit ack is sent again, even below the resume
            # point (its ack reply may have been lost with the connection, and with it the
            # reasons of rejected points); the resend must be deduplicated downstream.
            ledger.event("ws_resumed")
        acked = first
        window = 20
        for i in range(first, len(messages)):
            for p in messages[i]:
                ledger.send(_key(source, p), _value(p))
        sent = first
        while acked < len(messages):
            while sent < len(messages) and sent - acked < window:
                await _pace(started + sent * interval)
                await ws.send(json.dumps({"type": "data", "batch": messages[sent]}))
                sent += 1
            reply = json.loads(await asyncio.wait_for(ws.recv(), 30))
            if reply.get("type") != "ack":
                raise _WsRefused(f"error reply: {reply}")
            batch = messages[acked]
            assert reply["sequence_up_to"] == batch[-1]["sequence"], (reply, acked)
            rejected = {r["index"]: r["reason"] for r in reply["rejected"]}
            for index, p in enumerate(batch):
                if index in rejected:
                    ledger.refuse(_key(source, p), f"ws ack rejected: {rejected[index]}")
                else:
                    ledger.ack(_key(source, p))
            acked += 1
        return acked


# ---------------------------------------------------------------------------------------- MQTT


def mqtt_login(topic_prefix: str, mqtt_port: int) -> mqtt.MqttLogin:
    """A producer login for every topic under ``topic_prefix`` on the broker at ``mqtt_port`` (a
    private broker of this process, or the local one)."""
    directory = PRIVATE_BROKERS.get(mqtt_port)
    return mqtt.producer(topic_prefix, at=(mqtt_port, directory) if directory else None)


async def run_mqtt(
    fleet: FleetProcess, mqtt_port: int, plan: LoadPlan, ledger: Ledger
) -> None:
    """``mqtt_messages`` single-point QoS 1 messages from a persistent-session paho client; a
    message is acknowledged when the broker's PUBACK arrives (paho resends after reconnects)."""
    import paho.mqtt.client as paho

    source = plan.source("mqtt")
    loop = asyncio.get_running_loop()
    acked_mids: set[int] = set()
    mids: dict[int, Key] = {}

    def on_publish(_c: Any, _u: Any, mid: int, _rc: Any, _p: Any) -> None:
        loop.call_soon_threadsafe(acked_mids.add, mid)

    login = mqtt_login(fleet.bus_prefix, mqtt_port)
    client = login.client(
        f"faults-producer-{plan.tag}", clean_session=False, protocol=paho.MQTTv311
    )
    client.on_publish = on_publish
    client.max_inflight_messages_set(100)
    client.reconnect_delay_set(0.2, 1)
    login.connect(client, keepalive=10)
    client.loop_start()
    try:
        topic = f"{fleet.bus_prefix}/{DOMAIN}/{source}/s0/data"
        interval = plan.duration / max(plan.mqtt_messages, 1)
        started = time.monotonic()
        for n in range(plan.mqtt_messages):
            await _pace(started + n * interval)
            point = {"value": float(n), "timestamp": BASE_TS + n, "sequence": n}
            key = (source, "s0", BASE_TS + n)
            ledger.send(key, float(n))
            info = client.publish(topic, json.dumps(point), qos=1)
            mids[info.mid] = key
        deadline = time.monotonic() + plan.retry_for
        while time.monotonic() < deadline and len(acked_mids & set(mids)) < len(mids):
            await asyncio.sleep(0.1)
        for mid, key in mids.items():
            if mid in acked_mids:
                ledger.ack(key)
    finally:
        client.loop_stop()
        client.disconnect()


# ----------------------------------------------------------------------------------------- CSV


async def run_csv(fleet: FleetProcess, plan: LoadPlan, ledger: Ledger) -> None:
    """``csv_jobs`` uploads of ``csv_rows`` rows (columns a, b) spread over the duration; a job
    is an acknowledgement of its points once ``completed`` (rows in ``errors`` are refused). An
    upload refused, or a job failed, is uploaded again (same points: idempotent)."""
    source = plan.source("csv")
    interval = plan.duration / max(plan.csv_jobs, 1)
    started = time.monotonic()
    await asyncio.gather(*(
        _csv_job(fleet, plan, ledger, source, j, started + j * interval)
        for j in range(plan.csv_jobs)
    ))  # fmt: skip


async def _csv_job(
    fleet: FleetProcess, plan: LoadPlan, ledger: Ledger, source: str, j: int, due: float
) -> None:
    await _pace(due)
    first = j * plan.csv_rows
    lines = ["timestamp,a,b"]
    keys: dict[int, list[Key]] = {}
    for r in range(plan.csv_rows):
        n = first + r
        lines.append(f"{BASE_TS + n},{n},{n + 0.5}")
        keys[r + 1] = [(source, "a", BASE_TS + n), (source, "b", BASE_TS + n)]
        ledger.send(keys[r + 1][0], float(n))
        ledger.send(keys[r + 1][1], n + 0.5)
    invalid: set[Key] = set()
    if plan.invalid_every:
        lines[1] = f"{BASE_TS + first},oops,{first + 0.5}"  # row 1: column a is not a number
        ledger.sent[keys[1][0]] = float("nan")
        invalid.add(keys[1][0])
    data = ("\n".join(lines) + "\n").encode()
    deadline = time.monotonic() + plan.retry_for
    last = "no answer"
    headers = {"X-API-Key": fleet.admin_key}
    async with httpx.AsyncClient(base_url=fleet.url("csv-importer"), timeout=15) as client:
        for _attempt in range(1_000):
            if time.monotonic() > deadline:
                break
            try:
                reply = await client.post(
                    "/ingest/csv",
                    files={"file": (f"job{j}.csv", data, "text/csv")},
                    data={"source_id": source, "domain": DOMAIN, "timestamp_format": "unix",
                          "value_columns": "a,b"},
                    headers=headers,
                )
            except httpx.TransportError:
                ledger.event("csv_transport_error")
                await asyncio.sleep(0.3)
                continue
            if reply.status_code != 202:
                ledger.event(f"csv_upload_{reply.status_code}")
                last = f"upload HTTP {reply.status_code}: {reply.text[:200]}"
                if reply.status_code < 500:
                    break
                await asyncio.sleep(0.5)
                continue
            job = await _csv_wait(
                client, reply.json()["job_id"], headers, time.monotonic() + plan.csv_job_wait
            )
            status = job.get("status")
            if status == "completed":
                reasons = [f"csv row {e['row']}: {e['reason']}" for e in job.get("errors", [])]
                for row_keys in keys.values():
                    for key in row_keys:
                        if key in invalid:  # the job must have said why it skipped it
                            ledger.refuse(key, reasons[0] if reasons else "")
                        else:
                            ledger.ack(key)
                return
            ledger.event(f"csv_job_{status}")
            last = f"csv job {status}: {job.get('reason') or job.get('errors')}"[:300]
            await asyncio.sleep(0.5)
    for row_keys in keys.values():
        for key in row_keys:
            ledger.refuse(key, last)


async def _csv_wait(
    client: httpx.AsyncClient, job_id: str, headers: dict[str, str], deadline: float
) -> dict[str, Any]:
    job: dict[str, Any] = {}
    while time.monotonic() < deadline:
        try:
            reply = await client.get(f"/ingest/csv/jobs/{job_id}", headers=headers)
            if reply.status_code == 200:
                job = reply.json()
                if job["status"] in ("completed", "failed", "cancelled"):
                    return job
        except httpx.TransportError:  # the importer is restarting
            pass
        await asyncio.sleep(0.1)
    return job


# ------------------------------------------------------------------------------------ together


async def _pace(due: float) -> None:
    delay = due - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


async def run_load(
    fleet: FleetProcess, mqtt_port: int, plan: LoadPlan, ledger: Ledger
) -> None:
    """Every transport of ``plan`` at once."""
    runners = {
        "http": lambda: run_http(fleet, plan, ledger),
        "ws": lambda: run_ws(fleet, plan, ledger),
        "mqtt": lambda: run_mqtt(fleet, mqtt_port, plan, ledger),
        "csv": lambda: run_csv(fleet, plan, ledger),
    }

    async def run(transport: str) -> None:
        await runners[transport]()
        ledger.done.add(transport)

    await asyncio.gather(*(run(t) for t in plan.transports))
