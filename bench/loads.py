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
import time
import urllib.request
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field

import orjson
from wire import ClosedError, HttpConnection, open_http, open_mqtt, open_ws

BASE_TS = 1_700_000_000
DOMAIN = "infrastructure"
ACK_WAIT_SECONDS = 60.0  # longest wait for outstanding acks after a phase's deadline
BROKER_IN_FLIGHT = 1000  # the MQTT producer's QoS 1 messages not yet PUBACKed by the broker


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


def points_json(first: int, count: int, streams: int) -> bytes:
    """Points ``first`` … ``first + count - 1`` of a source as a JSON array."""
    return (
        b"["
        + b",".join(
            b'{"stream_id":"s%d","value":%d.0,"timestamp":%d}' % (n % streams, n, BASE_TS + n)
            for n in range(first, first + count)
        )
        + b"]"
    )


def ingest_body(source: str, points: bytes) -> bytes:
    """An ``/ingest/data`` request body."""
    return b'{"source_id":"%s","domain":"%s","data_points":%s}' % (
        source.encode(),
        DOMAIN.encode(),
        points,
    )


def schedule(load: PhaseLoad, index: int, start: float, senders: int = 0) -> tuple[float, float]:
    """(first send time, interval) of sender ``index`` of ``senders`` (default: one per source)
    under the fixed offered load."""
    senders = senders or load.sources
    interval = senders * load.batch / load.rate
    return start + interval * index / senders, interval


async def turn(load: PhaseLoad, due: float, deadline: float, record: PhaseRecord) -> bool:
    """Wait for a sender's next request/message (open loop: until ``due``); False when the
    phase is over (its deadline, or ``max_points`` acknowledged)."""
    if load.open_loop:
        if due >= deadline:
            return False
        delay = due - time.monotonic()
        if delay > 0:
            await asyncio.sleep(delay)
    elif time.monotonic() >= deadline:
        return False
    return not (load.max_points and record.points >= load.max_points)


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


def post_request(head: bytes, body: bytes) -> bytes:
    """A whole POST: ``post_head``'s bytes, the body's length, the body."""
    return head + b"%d\r\n\r\n" % len(body) + body


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
    conn = await open_http(port)
    head = post_head("/ingest/data", key)
    due, interval = schedule(load, index, record.started, connections)
    # One bound for the whole connection rather than a timer per request (not wait_for: in
    # 3.11 it can swallow a cancel).
    try:
        async with asyncio.timeout(deadline - time.monotonic() + ACK_WAIT_SECONDS):
            await http_requests(load, conn, head, sources, due, interval, deadline, record)
    finally:
        conn.close()


async def http_requests(
    load: PhaseLoad,
    conn: HttpConnection,
    head: bytes,
    sources: list[str],
    due: float,
    interval: float,
    deadline: float,
    record: PhaseRecord,
) -> None:
    sent = [0] * len(sources)
    max_requests = int(load.duration * 1_000_000 / load.batch) + 1  # a hard bound on the loop
    for k in range(max_requests):
        if not await turn(load, due, deadline, record):
            break
        i = k % len(sources)
        source = sources[i]
        body = ingest_body(source, points_json(sent[i], load.batch, load.streams))
        started = time.monotonic()
        status = await conn.request(post_request(head, body))
        if status == 202:
            record.ack(source, time.monotonic() - (due if load.open_loop else started), load.batch)
            sent[i] += load.batch  # a refused request's timestamps are reused next time
        else:
            record.error(f"http_{status}")
        due += interval


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
    load: PhaseLoad, index: int, port: int, key: str, record: PhaseRecord, start: StartLine
) -> None:
    source = load.source_id(index)
    replies: deque[bytes] = deque()
    arrived = asyncio.Event()

    def queue_reply(payload: bytes) -> None:
        replies.append(payload)
        arrived.set()

    try:
        ws = await open_ws(port, "/ingest/stream")
        ws.on_message = queue_reply
        ws.on_close = lambda _exc: arrived.set()
        ws.send(
            orjson.dumps({"type": "connect", "source_id": source, "domain": DOMAIN, "api_key": key})
        )
        async with asyncio.timeout(60):
            await arrived.wait()
        reply = orjson.loads(replies.popleft())
    except Exception as exc:
        record.error(f"ws_connect_{type(exc).__name__}")
        start.arrived()
        return
    start.arrived()
    if reply.get("type") != "connected":
        record.error(f"ws_{reply.get('code', reply.get('type'))}")
        ws.close()
        return
    await start.go.wait()
    deadline = start.deadline
    owed: deque[float] = deque()  # per sent message, its latency origin (acks come in order)
    window_open = asyncio.Event()
    window_open.set()
    all_acked = asyncio.Event()
    sending_done = False

    def on_reply(payload: bytes) -> None:
        reply = orjson.loads(payload)
        origin = owed.popleft()
        if reply.get("type") == "ack":
            record.ack(source, time.monotonic() - origin, int(reply["accepted"]))
            if reply.get("rejected"):
                record.error("ws_rejected_points")
        else:
            record.error(f"ws_{reply.get('code', reply.get('type'))}")
        window_open.set()
        if sending_done and not owed:
            all_acked.set()

    def on_close(_exc: BaseException) -> None:
        window_open.set()
        all_acked.set()

    ws.on_message, ws.on_close = on_reply, on_close
    due, interval = schedule(load, index, record.started)
    sent = 0
    max_messages = int(load.duration * 1_000_000 / load.batch) + 1
    try:
        for _ in range(max_messages):
            if not await turn(load, due, deadline, record):
                break
            while len(owed) >= load.ws_window and ws.closed is None:
                window_open.clear()
                await window_open.wait()
            owed.append(due if load.open_loop else time.monotonic())
            ws.send(b'{"type":"data","batch":%s}' % points_json(sent, load.batch, load.streams))
            sent += load.batch
            due += interval
        sending_done = True
        if owed:
            try:
                async with asyncio.timeout(ACK_WAIT_SECONDS):
                    await all_acked.wait()
            except TimeoutError:
                pass
            if owed:
                record.error("ws_acks_missing")
    except ClosedError:
        record.error("ws_closed")
    finally:
        ws.close()


async def run_ws(load: PhaseLoad, port: int, key: str, record: PhaseRecord) -> None:
    # Sessions connect before the clock starts (2,000 handshakes take a while), then send.
    start = StartLine(load.sources)
    tasks = [
        asyncio.create_task(ws_source(load, i, port, key, record, start))
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


async def run_mqtt(
    load: PhaseLoad,
    topic_prefix: str,
    metrics_url: str,
    record: PhaseRecord,
    port: int | None = None,
) -> None:
    """Single-point QoS 1 messages from one MQTT 5 connection.

    Latency is the broker's PUBACK (the producer's ack; the gateway acks the broker only after
    JetStream's PubAck). Flow control keeps at most ``BROKER_IN_FLIGHT`` messages not yet acked
    by the broker (beyond, the latency would be the client's own queue) and ``mqtt_window`` not
    yet acked by the gateway (read from its /metrics): beyond the gateway's in-flight window the
    local Mosquitto queues only ``max_queued_messages`` (1000) per session and silently drops
    the rest."""
    from tests import mqtt  # the producer's credentials on the local broker (if it wants them)

    local_port, directory = mqtt.local_broker()
    login = mqtt.producer(topic_prefix, at=(port or local_port, directory))
    client = await open_mqtt(
        login.port, f"bench-pub-{load.phase}-{time.time_ns()}", login.username, login.password
    )
    origin: dict[int, tuple[float, str]] = {}  # packet id → (latency origin, source)
    window_open = asyncio.Event()
    all_acked = asyncio.Event()
    refused = 0

    def on_puback(mid: int, reason: int) -> None:
        nonlocal refused
        entry = origin.pop(mid, None)
        if entry is not None:
            if reason < 0x80:
                record.ack(entry[1], time.monotonic() - entry[0], 1)
            else:
                refused += 1
        window_open.set()
        if record.send_done and not origin:
            all_acked.set()

    def on_close(_exc: BaseException) -> None:
        window_open.set()
        all_acked.set()

    client.on_puback, client.on_close = on_puback, on_close
    counters = [0] * load.sources
    topics = [
        f"{topic_prefix}/{DOMAIN}/{load.source_id(i)}/s".encode() for i in range(load.sources)
    ]
    base_acked = await asyncio.to_thread(gateway_acked, metrics_url)
    acked_seen = base_acked
    record.start()
    deadline = record.started + load.duration
    interval = 1.0 / load.rate
    due = record.started
    published = 0
    try:
        while client.closed is None:
            now = time.monotonic()
            if load.open_loop:
                if due >= deadline:
                    break
                if due > now:
                    await asyncio.sleep(due - now)
            elif now >= deadline:
                break
            if load.max_points and published >= load.max_points:
                break
            if len(origin) >= BROKER_IN_FLIGHT:
                window_open.clear()
                try:
                    async with asyncio.timeout(ACK_WAIT_SECONDS):
                        await window_open.wait()
                except TimeoutError:
                    record.error("mqtt_stopped_acking")
                    break
                continue
            if published - (acked_seen - base_acked) > load.mqtt_window:
                if time.monotonic() >= deadline + ACK_WAIT_SECONDS:
                    record.error("mqtt_stopped_acking")
                    break
                await asyncio.sleep(0.05)
                acked_seen = await asyncio.to_thread(gateway_acked, metrics_url)
                continue
            # Everything due by now goes out at once: one timer per burst, not per message.
            sent_at = time.monotonic()
            for _ in range(BROKER_IN_FLIGHT - len(origin)):
                i = published % load.sources
                n = counters[i]
                counters[i] += 1
                mid = client.publish(
                    b"%s%d/data" % (topics[i], n % load.streams),
                    b'{"value": %d, "timestamp": %d}' % (n, BASE_TS + n),
                )
                origin[mid] = (due if load.open_loop else sent_at, load.source_id(i))
                published += 1
                due += interval
                if (
                    (load.open_loop and (due > sent_at or due >= deadline))
                    or (load.max_points and published >= load.max_points)
                    or published - (acked_seen - base_acked) > load.mqtt_window
                ):
                    break
            await asyncio.sleep(0)  # let PUBACKs in
        record.send_done = time.monotonic()
        if origin:
            try:
                async with asyncio.timeout(ACK_WAIT_SECONDS):
                    await all_acked.wait()
            except TimeoutError:
                pass
        if origin:
            record.error("mqtt_pubacks_missing")
        if refused:
            record.errors["mqtt_refused"] = refused
    finally:
        record.send_done = record.send_done or time.monotonic()
        client.disconnect()


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
