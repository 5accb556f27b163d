"""Bounded, self-stopping load generators for each transport, all on 127.0.0.1.

Every generator runs one *phase*: ``…fixed`` (an open-loop schedule of ``rate`` points/s in total;
latency is measured from the *scheduled* send time, so a stalled server cannot hide its delay by
slowing the sender) or anything else, e.g. ``…saturation`` (as fast as the transport's flow
control allows; latency from the actual send). A phase ends after ``duration`` seconds or, when
``max_points`` is set, once that many points were sent. HTTP sources share ``connections``
keep-alive connections (a device fleet behind a load balancer), round robin. Each source
numbers its points 0, 1, 2, …: point ``n`` has stream ``s{n % streams}`` and timestamp
``BASE_TS + n`` seconds, so every point has its own idempotency key and none is deduplicated
away. Source ids are
``bench-<transport>-<phase>-<i>``, which is what the verification in ``run.py`` groups by.
"""

from __future__ import annotations

import asyncio
import threading
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson

BASE_TS = 1_700_000_000
DOMAIN = "infrastructure"
ACK_WAIT_SECONDS = 60.0  # longest wait for outstanding acks after a phase's deadline
BROKER_IN_FLIGHT = 1000  # the MQTT producer's unacked QoS 1 messages (paho's in-flight window)


@dataclass
class PhaseLoad:
    """What one transport phase asks for."""

    transport: str
    phase: str  # "<profile>-fixed" (open loop) or "<profile>-saturation", "<profile>-drain"
    duration: float
    rate: float  # points/s in total (fixed only)
    batch: int  # points per request / message (MQTT: always 1)
    sources: int
    streams: int
    ws_window: int = 100
    mqtt_window: int = 10_000
    connections: int = 0  # HTTP keep-alive connections (0: one per source)
    max_points: int = 0  # stop once this many points were sent (0: only the duration)

    def source_id(self, index: int) -> str:
        return f"bench-{self.transport}-{self.phase}-{index}"

    @property
    def open_loop(self) -> bool:
        return self.phase.endswith("fixed")


@dataclass
class PhaseRecord:
    """What the generators observed: acks (time, latency, points) and refusals."""

    acks: list[tuple[float, float, int]] = field(default_factory=list)
    accepted: dict[str, int] = field(default_factory=dict)  # source_id → points acknowledged
    errors: dict[str, int] = field(default_factory=dict)
    started: float = 0.0
    send_done: float = 0.0
    on_start: Callable[[], None] | None = None  # called when the clock starts

    def start(self) -> None:
        """The phase's clock starts now (after any session set-up)."""
        if self.on_start is not None:
            self.on_start()
        self.started = time.monotonic()

    def ack(self, source: str, latency: float, points: int) -> None:
        self.acks.append((time.monotonic(), latency, points))
        self.accepted[source] = self.accepted.get(source, 0) + points

    def error(self, kind: str) -> None:
        self.errors[kind] = self.errors.get(kind, 0) + 1

    @property
    def points(self) -> int:
        return sum(self.accepted.values())


def make_points(first: int, count: int, streams: int) -> list[dict[str, object]]:
    return [
        {"stream_id": f"s{n % streams}", "value": float(n), "timestamp": BASE_TS + n}
        for n in range(first, first + count)
    ]


def schedule(load: PhaseLoad, index: int, start: float, senders: int = 0) -> tuple[float, float]:
    """(first send time, interval) of sender ``index`` of ``senders`` (default: one per source)
    under the fixed offered load."""
    senders = senders or load.sources
    interval = senders * load.batch / load.rate
    return start + interval * index / senders, interval


async def pace(due: float) -> None:
    delay = due - time.monotonic()
    if delay > 0:
        await asyncio.sleep(delay)


# ---------------------------------------------------------------------------------------- HTTP


async def http_post(
    reader: asyncio.StreamReader, writer: asyncio.StreamWriter, head: bytes, payload: bytes
) -> int:
    """One POST on a keep-alive connection; returns the status code."""
    writer.write(head + str(len(payload)).encode() + b"\r\n\r\n" + payload)
    await writer.drain()
    status = int((await reader.readline()).split()[1])
    length = 0
    while (line := await reader.readline()) not in (b"\r\n", b""):
        name, _, value = line.partition(b":")
        if name.lower() == b"content-length":
            length = int(value)
    await reader.readexactly(length)
    return status


def post_head(path: str, api_key: str | None) -> bytes:
    key = f"X-API-Key: {api_key}\r\n" if api_key else ""
    return (
        f"POST {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{key}"
        "Content-Type: application/json\r\nContent-Length: "
    ).encode()


async def http_connection(
    load: PhaseLoad,
    index: int,
    connections: int,
    port: int,
    key: str,
    record: PhaseRecord,
    deadline: float,
) -> None:
    """One keep-alive connection sending for sources index, index + connections, …"""
    sources = [load.source_id(i) for i in range(index, load.sources, connections)]
    sent = [0] * len(sources)
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    head = post_head("/ingest/data", key)
    due, interval = schedule(load, index, record.started, connections)
    max_requests = int(load.duration * 1_000_000 / load.batch) + 1  # a hard bound on the loop
    try:
        for k in range(max_requests):
            if load.open_loop:
                if due >= deadline:
                    break
                await pace(due)
            elif time.monotonic() >= deadline:
                break
            if load.max_points and record.points >= load.max_points:
                break
            i = k % len(sources)
            source = sources[i]
            body = orjson.dumps(
                {
                    "source_id": source,
                    "domain": DOMAIN,
                    "data_points": make_points(sent[i], load.batch, load.streams),
                }
            )
            started = time.monotonic()
            async with asyncio.timeout(30):  # not wait_for: in 3.11 it can swallow a cancel
                status = await http_post(reader, writer, head, body)
            if status == 202:
                record.ack(
                    source, time.monotonic() - (due if load.open_loop else started), load.batch
                )
                sent[i] += load.batch  # a refused request's timestamps are reused next time
            else:
                record.error(f"http_{status}")
            due += interval
    finally:
        writer.close()


async def run_http(load: PhaseLoad, port: int, key: str, record: PhaseRecord) -> None:
    record.start()
    deadline = record.started + load.duration
    connections = min(load.connections or load.sources, load.sources)
    await asyncio.gather(
        *(
            http_connection(load, i, connections, port, key, record, deadline)
            for i in range(connections)
        )
    )
    record.send_done = time.monotonic()


# ----------------------------------------------------------------------------------- WebSocket


async def ws_source(
    load: PhaseLoad, index: int, url: str, key: str, record: PhaseRecord, start: StartLine
) -> None:
    import websockets

    source = load.source_id(index)
    try:
        ws = await websockets.connect(url, max_size=None, open_timeout=60)
        await ws.send(
            orjson.dumps(
                {"type": "connect", "source_id": source, "domain": DOMAIN, "api_key": key}
            ).decode()
        )
        reply = orjson.loads(await ws.recv())
    except Exception as exc:
        record.error(f"ws_connect_{type(exc).__name__}")
        start.arrived()
        return
    start.arrived()
    if reply.get("type") != "connected":
        record.error(f"ws_{reply.get('code', reply.get('type'))}")
        await ws.close()
        return
    await start.go.wait()
    deadline = start.deadline
    async with ws:
        window = asyncio.Semaphore(load.ws_window)
        owed: deque[float] = deque()  # per sent message, its latency origin (acks come in order)
        sending_done = asyncio.Event()

        async def read_acks() -> None:
            while not (sending_done.is_set() and not owed):
                reply = orjson.loads(await ws.recv())
                origin = owed.popleft()
                window.release()
                if reply.get("type") == "ack":
                    record.ack(source, time.monotonic() - origin, int(reply["accepted"]))
                    if reply.get("rejected"):
                        record.error("ws_rejected_points")
                else:
                    record.error(f"ws_{reply.get('code', reply.get('type'))}")

        reader = asyncio.create_task(read_acks())
        due, interval = schedule(load, index, record.started)
        sent = 0
        max_messages = int(load.duration * 1_000_000 / load.batch) + 1
        try:
            for _ in range(max_messages):
                if load.open_loop:
                    if due >= deadline:
                        break
                    await pace(due)
                elif time.monotonic() >= deadline:
                    break
                if load.max_points and record.points >= load.max_points:
                    break
                frame = orjson.dumps(
                    {"type": "data", "batch": make_points(sent, load.batch, load.streams)}
                ).decode()
                await window.acquire()
                owed.append(due if load.open_loop else time.monotonic())
                await ws.send(frame)
                sent += load.batch
                due += interval
        finally:
            sending_done.set()
            if owed:
                try:
                    async with asyncio.timeout(ACK_WAIT_SECONDS):
                        await reader
                except TimeoutError:
                    record.error("ws_acks_missing")
            reader.cancel()


async def run_ws(load: PhaseLoad, port: int, key: str, record: PhaseRecord) -> None:
    url = f"ws://127.0.0.1:{port}/ingest/stream"
    # Sessions connect before the clock starts (2,000 handshakes take a while), then send.
    start = StartLine(load.sources)
    tasks = [
        asyncio.create_task(ws_source(load, i, url, key, record, start))
        for i in range(load.sources)
    ]
    try:
        async with asyncio.timeout(120):
            await start.all_in.wait()
    except TimeoutError:
        record.error("ws_connect_timeout")
    record.start()
    start.deadline = record.started + load.duration
    start.go.set()
    await asyncio.gather(*tasks)
    record.send_done = time.monotonic()


class StartLine:
    """Holds every session until all are connected, then starts them together."""

    def __init__(self, sessions: int) -> None:
        self.waiting = sessions
        self.all_in = asyncio.Event()
        self.go = asyncio.Event()
        self.deadline = 0.0

    def arrived(self) -> None:
        self.waiting -= 1
        if self.waiting <= 0:
            self.all_in.set()


# ---------------------------------------------------------------------------------------- MQTT


def gateway_acked(metrics_url: str) -> float:
    with urllib.request.urlopen(metrics_url, timeout=2) as reply:
        for line in reply.read().decode().splitlines():
            if line.startswith("gateway_mqtt_messages_acked_total "):
                return float(line.split()[1])
    return 0.0


def mqtt_publisher(
    load: PhaseLoad,
    topic_prefix: str,
    metrics_url: str,
    record: PhaseRecord,
    port: int | None,
    cancelled: threading.Event,
) -> None:
    """Single-point QoS 1 messages from one paho client (in a thread).

    Latency is the broker's PUBACK (the producer's ack; the gateway acks the broker only after
    JetStream's PubAck). Flow control keeps at most ``mqtt_window`` messages not yet acked by the
    gateway (read from its /metrics): beyond the gateway's in-flight window the local Mosquitto
    queues only ``max_queued_messages`` (1000) per session and silently drops the rest."""
    import paho.mqtt.client as paho

    # Never call into paho while holding ``lock``: paho runs on_publish under its own mutex.
    lock = threading.Lock()
    origin: dict[int, tuple[float, str]] = {}
    early: dict[int, float] = {}  # PUBACKs that came back before publish() returned
    done = threading.Event()

    def on_publish(_c: object, _u: object, mid: int, _rc: object, _p: object) -> None:
        now = time.monotonic()
        with lock:
            entry = origin.pop(mid, None)
            if entry is None:
                early[mid] = now
            else:
                record.acks.append((now, now - entry[0], 1))
                record.accepted[entry[1]] = record.accepted.get(entry[1], 0) + 1
            if done.is_set() and not origin:
                drained.set()

    drained = threading.Event()
    from tests import mqtt  # the producer's credentials on the local broker (if it wants them)

    local_port, directory = mqtt.local_broker()
    login = mqtt.producer(topic_prefix, at=(port or local_port, directory))
    client = login.client(f"bench-pub-{load.phase}-{time.time_ns()}", protocol=paho.MQTTv5)
    client.on_publish = on_publish
    client.max_inflight_messages_set(BROKER_IN_FLIGHT)
    client.max_queued_messages_set(0)
    login.connect(client)
    client.loop_start()
    base_acked = gateway_acked(metrics_url)
    counters = [0] * load.sources
    deadline = record.started + load.duration
    interval = 1.0 / load.rate
    due = record.started
    acked_seen, checked_at = base_acked, 0.0
    published = 0
    try:
        for k in range(int(load.duration * 200_000)):  # hard bound on the loop
            if cancelled.is_set():
                break
            now = time.monotonic()
            if load.open_loop:
                if due >= deadline:
                    break
                if due > now:
                    time.sleep(due - now)
            elif now >= deadline:
                break
            if load.max_points and published >= load.max_points:
                break
            # Wait for the broker's PUBACKs beyond paho's in-flight window (queueing in the
            # client would only measure the client) and for the gateway beyond ours.
            stalled = True  # unless the wait ends before the deadline (while … else)
            while len(origin) >= BROKER_IN_FLIGHT or (
                published - (acked_seen - base_acked) > load.mqtt_window
            ):
                if cancelled.is_set() or time.monotonic() >= deadline + ACK_WAIT_SECONDS:
                    break
                time.sleep(0.001)
                if published - (acked_seen - base_acked) > load.mqtt_window and (
                    time.monotonic() - checked_at > 0.05
                ):
                    acked_seen, checked_at = gateway_acked(metrics_url), time.monotonic()
            else:
                stalled = False
            if stalled:
                record.error("mqtt_stopped_acking")
                break
            i = k % load.sources
            n = counters[i]
            counters[i] += 1
            source = load.source_id(i)
            payload = b'{"value": %d, "timestamp": %d}' % (n, BASE_TS + n)
            topic = f"{topic_prefix}/{DOMAIN}/{source}/s{n % load.streams}/data"
            sent_at = due if load.open_loop else time.monotonic()
            info = client.publish(topic, payload, qos=1)
            with lock:
                acked_at = early.pop(info.mid, None)
                if acked_at is None:
                    origin[info.mid] = (sent_at, source)
                else:
                    record.acks.append((acked_at, acked_at - sent_at, 1))
                    record.accepted[source] = record.accepted.get(source, 0) + 1
            published += 1
            due += interval
        record.send_done = time.monotonic()
        with lock:
            done.set()
            if not origin:
                drained.set()
        for _ in range(int(ACK_WAIT_SECONDS * 10)):
            if drained.wait(0.1) or cancelled.is_set():
                break
        if not drained.is_set():
            record.error("mqtt_pubacks_missing")
    finally:
        record.send_done = record.send_done or time.monotonic()
        client.disconnect()
        client.loop_stop()


async def run_mqtt(
    load: PhaseLoad,
    topic_prefix: str,
    metrics_url: str,
    record: PhaseRecord,
    port: int | None = None,
) -> None:
    record.start()
    cancelled = threading.Event()
    try:
        await asyncio.to_thread(
            mqtt_publisher, load, topic_prefix, metrics_url, record, port, cancelled
        )
    except asyncio.CancelledError:  # Ctrl-C / SIGTERM: let the thread end now, not in minutes
        cancelled.set()
        raise


# ----------------------------------------------------------------------------------------- CSV


def csv_file(rows: int, streams: int) -> bytes:
    """A wide CSV: ``timestamp`` + one column per stream; row n is time BASE_TS + n."""
    header = "timestamp," + ",".join(f"s{j}" for j in range(streams))
    lines = [header] + [
        f"{BASE_TS + n}," + ",".join(f"{n}.{j}" for j in range(streams)) for n in range(rows)
    ]
    return ("\n".join(lines) + "\n").encode()


async def run_csv(load: PhaseLoad, port: int, key: str, rows: int, record: PhaseRecord) -> None:
    """One import job: upload, then poll the job until it ends. The ack is the job's completion
    (every chunk's PubAcks in); points published over time come from the job's counters."""
    import httpx

    source = load.source_id(0)
    body = csv_file(rows, load.streams)
    base = f"http://127.0.0.1:{port}"
    async with httpx.AsyncClient(base_url=base, headers={"X-API-Key": key}, timeout=30) as http:
        record.start()
        reply = await http.post(
            "/ingest/csv",
            files={"file": ("bench.csv", body, "text/csv")},
            data={"source_id": source, "domain": DOMAIN, "timestamp_column": "timestamp",
                  "timestamp_format": "unix", "timestamp_unit": "s"},
        )  # fmt: skip
        if reply.status_code != 202:
            record.error(f"csv_{reply.status_code}")
            record.send_done = time.monotonic()
            return
        job_id = reply.json()["job_id"]
        published = 0
        deadline = record.started + load.duration + ACK_WAIT_SECONDS * 5
        job: dict[str, object] = {}
        while time.monotonic() < deadline:
            job = (await http.get(f"/ingest/csv/jobs/{job_id}")).json()
            now_published = int(job.get("points_published") or 0)  # type: ignore[call-overload]
            if now_published > published:
                record.acks.append((time.monotonic(), float("nan"), now_published - published))
                published = now_published
            if job.get("status") in ("completed", "failed", "cancelled"):
                break
            await asyncio.sleep(0.2)
        record.send_done = time.monotonic()
        if job.get("status") != "completed":
            record.error(f"csv_job_{job.get('status', 'timeout')}")
        if job.get("points_rejected"):
            record.error("csv_points_rejected")
        record.accepted[source] = published
        # The job's latency: upload → every point acknowledged by JetStream.
        record.acks.append((record.send_done, record.send_done - record.started, 0))
