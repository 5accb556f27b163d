"""Physical limits of this machine, measured in the same run as the fleet, for the ratios.

- PostgreSQL: binary COPY into a scratch table without indexes; the writer's two paths into a
  scratch table with the ``data_points`` unique key: binary COPY straight in (its usual path),
  and its replay path (COPY into its temporary staging table, then its ``INSERT … SELECT … ON
  CONFLICT DO NOTHING``) — rows/s.
- JetStream from Python (nats-py): ``publish_async`` with the PubAcks awaited together, and a
  durable pull consumer doing ``fetch(500)`` + ack per message — msgs/s.
- An empty Starlette app under uvicorn with uvloop and httptools, driven by the same raw
  clients as the fleet: a POST handler that reads the body and answers 202 — req/s with the
  batched profile's connections and body, and with the devices profile's connections and one
  point per request; a WebSocket route that answers every message with an ack — messages/s
  with the devices profile's sessions and window, one point per message; and, in the devices
  shape, the empty server's CPU per answer (/proc). No fleet can answer single readings faster
  than these on this machine.

Each figure is bounded by a row/message count and by ``seconds``.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg
from loads import ingest_body, points_json, post_head, post_request
from wire import WsConnection, open_http, open_ws

from tests.host import free_port  # the repo root is on sys.path: run.py puts it there

# The writer's SQL, so the limit is the path the fleet really takes (private names, read-only).
from writer_postgres.store import _INSERT, _STAGING_DDL, COLUMNS, STAGING_TABLE

T0 = datetime(2026, 1, 1, tzinfo=UTC)
_SCRATCH_TABLES = ("bench_copy_scratch", "bench_keyed_scratch", "bench_upsert_scratch")
_SCRATCH = ", ".join(_SCRATCH_TABLES)


def scratch_rows(first: int, count: int) -> list[tuple[object, ...]]:
    now = datetime.now(UTC)
    return [
        (
            T0 + timedelta(seconds=n),
            "infrastructure",
            f"limit-{n % 8}",
            f"s{n % 10}",
            float(n),
            "normal",
            None,
            "cpu_usage",
            n,
            "{}",
            "http",
            now,
            None,
            None,
            None,
        )
        for n in range(first, first + count)
    ]


async def pg_limits(dsn: str, rows: int, batch: int, seconds: float) -> dict[str, float]:
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute(f"DROP TABLE IF EXISTS {_SCRATCH}")
        for table in _SCRATCH_TABLES:
            await conn.execute(f"CREATE TABLE {table} (LIKE data_points INCLUDING DEFAULTS)")
        for table in ("bench_keyed_scratch", "bench_upsert_scratch"):
            await conn.execute(
                f"ALTER TABLE {table} ADD CONSTRAINT {table}_key "
                "UNIQUE (domain, source_id, stream_id, time)"
            )
        prepared = [scratch_rows(i, min(batch, rows - i)) for i in range(0, rows, batch)]

        async def timed(one_batch: object) -> float:
            done, started = 0, time.perf_counter()
            for chunk in prepared:
                if time.perf_counter() - started > seconds:
                    break
                await one_batch(chunk)  # type: ignore[operator]
                done += len(chunk)
            return done / (time.perf_counter() - started)

        async def copy(chunk: list[tuple[object, ...]]) -> None:
            await conn.copy_records_to_table("bench_copy_scratch", records=chunk, columns=COLUMNS)

        async def keyed(chunk: list[tuple[object, ...]]) -> None:
            await conn.copy_records_to_table("bench_keyed_scratch", records=chunk, columns=COLUMNS)

        await conn.execute(_STAGING_DDL)
        upsert_sql = _INSERT.replace("INTO data_points", "INTO bench_upsert_scratch")

        async def staged(chunk: list[tuple[object, ...]]) -> None:
            async with conn.transaction():
                await conn.copy_records_to_table(STAGING_TABLE, records=chunk, columns=COLUMNS)
                await conn.execute(upsert_sql)

        return {
            "pg_copy_rows_per_s": round(await timed(copy)),
            "pg_keyed_copy_rows_per_s": round(await timed(keyed)),
            "pg_staged_upsert_rows_per_s": round(await timed(staged)),
        }
    finally:
        await conn.execute(f"DROP TABLE IF EXISTS {_SCRATCH}")
        await conn.close()


async def jetstream_limits(
    nats_url: str, prefix: str, messages: int, payload_bytes: int, seconds: float
) -> dict[str, float]:
    import nats

    nc = await nats.connect(nats_url)
    js = nc.jetstream(publish_async_max_pending=4000)
    stream, subject = f"{prefix}_BENCH_LIMIT", f"{prefix}.benchlimit.x"
    payload = b"x" * payload_bytes
    try:
        await js.add_stream(name=stream, subjects=[f"{prefix}.benchlimit.>"])
        sent, started = 0, time.perf_counter()
        while sent < messages and time.perf_counter() - started < seconds:
            for _ in range(min(1000, messages - sent)):
                await js.publish_async(subject, payload)
            sent += min(1000, messages - sent)
        async with asyncio.timeout(30):
            await js.publish_async_completed()
        publish_rate = sent / (time.perf_counter() - started)

        sub = await js.pull_subscribe(subject, durable="benchlimit", stream=stream)
        got, started = 0, time.perf_counter()
        while got < sent and time.perf_counter() - started < seconds:
            try:
                msgs = await sub.fetch(500, timeout=2)
            except TimeoutError:
                break
            for msg in msgs:
                await msg.ack()
            got += len(msgs)
        consume_rate = got / (time.perf_counter() - started)
        return {
            "js_publish_async_msgs_per_s": round(publish_rate),
            "js_fetch_ack_msgs_per_s": round(consume_rate),
            "js_payload_bytes": payload_bytes,
        }
    finally:
        try:
            await js.delete_stream(stream)
        except Exception:  # never created
            pass
        await nc.close()


EMPTY_APP = """
import sys, uvicorn
from starlette.applications import Starlette
from starlette.responses import Response
from starlette.routing import Route, WebSocketRoute
from starlette.websockets import WebSocketDisconnect

async def ingest(request):
    await request.body()
    return Response(b'{"accepted": 0}', status_code=202, media_type="application/json")

async def stream(websocket):
    await websocket.accept()
    try:
        while True:
            await websocket.receive_text()
            await websocket.send_text('{"type":"ack","accepted":1,"rejected":[]}')
    except WebSocketDisconnect:
        pass

app = Starlette(routes=[Route("/ingest/data", ingest, methods=["POST"]),
                        WebSocketRoute("/ingest/stream", stream)])
uvicorn.run(app, host="127.0.0.1", port=int(sys.argv[1]), loop="uvloop", http="httptools",
            log_level="warning", access_log=False)
"""


def _cpu_seconds(pid: int) -> float:
    """utime + stime of process ``pid`` (/proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


async def _posts(port: int, connections: int, request: bytes, seconds: float) -> int:
    """Requests answered in ``seconds`` on ``connections`` keep-alive connections, each sending
    ``request`` in turn."""
    counts = [0] * connections
    deadline = time.monotonic() + seconds

    async def client(i: int) -> None:
        conn = await open_http(port)
        for _ in range(1_000_000):
            if time.monotonic() >= deadline:
                break
            async with asyncio.timeout(10):
                await conn.request(request)
            counts[i] += 1
        conn.close()

    await asyncio.gather(*(client(i) for i in range(connections)))
    return sum(counts)


async def _ws_answers(
    conns: list[WsConnection], window: int, message: bytes, seconds: float
) -> int:
    """Messages the empty app's WebSocket route answers in ``seconds``, each session keeping
    ``window`` messages unanswered (the next one goes when an answer arrives)."""
    answered = 0
    deadline = time.monotonic() + seconds

    def on_answer(conn: WsConnection) -> Callable[[bytes], None]:
        def answer(_payload: bytes) -> None:
            nonlocal answered
            if time.monotonic() < deadline:  # answers after the deadline do not count
                answered += 1
                conn.send(message)

        return answer

    for conn in conns:
        conn.on_message = on_answer(conn)
        for _ in range(window):
            conn.send(message)
    await asyncio.sleep(seconds)
    return answered


async def web_limits(
    batched: tuple[int, int, int], devices: tuple[int, int, int], seconds: float
) -> dict[str, float]:
    """The empty app's rates in the two shapes of traffic, and its server's CPU per answer in
    the devices shape: ``batched`` = (connections, points per request, streams) of the batched
    profile; ``devices`` = (HTTP connections, WebSocket sessions, unanswered messages per
    session) with 1 point per request/message."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", EMPTY_APP, str(port)], cwd=Path(__file__).parent)

    async def measured(answers: Awaitable[int]) -> tuple[float, float]:
        """(answers/s, server CPU µs per answer)."""
        cpu, started = _cpu_seconds(proc.pid), time.monotonic()
        answered = await answers
        server = _cpu_seconds(proc.pid) - cpu
        return answered / (time.monotonic() - started), 1e6 * server / max(answered, 1)

    try:
        for _ in range(100):
            try:
                _, w = await asyncio.open_connection("127.0.0.1", port)
                w.close()
                break
            except OSError:
                await asyncio.sleep(0.1)
        connections, batch, streams = batched
        head = post_head("/ingest/data", None)
        request = post_request(head, ingest_body("x", points_json(0, batch, streams)))
        single = post_request(head, ingest_body("x", points_json(0, 1, 1)))
        http_connections, sessions, window = devices
        batched_rate, _ = await measured(_posts(port, connections, request, seconds))
        single_rate, single_us = await measured(_posts(port, http_connections, single, seconds))
        conns = [await open_ws(port, "/ingest/stream") for _ in range(sessions)]  # not timed
        message = b'{"type":"data","batch":%s}' % points_json(0, 1, 1)
        try:
            ws_rate, ws_us = await measured(_ws_answers(conns, window, message, seconds))
        finally:
            for conn in conns:
                conn.close()
        return {
            "starlette_empty_post_req_per_s": round(batched_rate),
            "starlette_empty_post_1pt_req_per_s": round(single_rate),
            "starlette_empty_post_1pt_server_us": round(single_us, 1),
            "starlette_ws_answer_1pt_msgs_per_s": round(ws_rate),
            "starlette_ws_answer_1pt_server_us": round(ws_us, 1),
        }
    finally:
        proc.terminate()
        proc.wait(timeout=10)
