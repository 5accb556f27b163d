"""The services' HTTP protocol (``tributary_runtime.serve``): a response of known length leaves
in one write, a streamed one sends its head at once, and HTTP keeps working on a real socket."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route
from uvicorn.server import ServerState

from tests.host import free_port
from tributary_runtime.serve import HeaderTimeoutProtocol, Server, build_server
from tributary_runtime.settings import ServiceSettings

first_chunk_allowed = asyncio.Event()


async def ingest(request: Request) -> Response:
    return JSONResponse({"accepted": len(await request.body())}, status_code=202)


async def stream(_request: Request) -> Response:
    async def chunks() -> AsyncIterator[bytes]:
        await first_chunk_allowed.wait()
        yield b"one"
        yield b"two"

    return StreamingResponse(chunks(), media_type="text/plain")


APP = Starlette(
    routes=[
        Route("/ingest", ingest, methods=["POST", "HEAD", "GET"]),
        Route("/stream", stream),
    ]
)


class Connection(asyncio.Transport):
    """The client end as the protocol sees it: records each write the server makes."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def close(self) -> None:
        self.closed = True

    def is_closing(self) -> bool:
        return self.closed

    def get_extra_info(self, name: str, default: Any = None) -> Any:
        return {"sockname": ("127.0.0.1", 8000), "peername": ("127.0.0.1", 50000)}.get(
            name, default
        )

    def pause_reading(self) -> None:
        pass

    def resume_reading(self) -> None:
        pass


class QuietServer(Server):
    def install_signal_handlers(self) -> None:  # the test process keeps its own handlers
        pass


@asynccontextmanager
async def listening(settings: ServiceSettings) -> AsyncIterator[None]:
    """APP served by the services' uvicorn setup on ``settings.port`` (bounded: 10 s to start)."""
    server = build_server(APP, settings, server_class=QuietServer)
    task = asyncio.create_task(server.serve())
    for _ in range(200):
        if server.started or task.done():
            break
        await asyncio.sleep(0.05)
    assert server.started, "uvicorn did not start"
    try:
        yield
    finally:
        server.should_exit = True
        await asyncio.wait_for(task, 30)


async def serve_one(request: bytes, until: int = 1) -> list[bytes]:
    """Feed ``request`` to the services' protocol and return its writes once there are
    ``until`` of them (bounded: 2 s)."""
    config = uvicorn.Config(APP, lifespan="off", log_level="warning")
    protocol = HeaderTimeoutProtocol(config, ServerState(), {}, asyncio.get_running_loop())
    connection = Connection()
    protocol.connection_made(connection)
    try:
        protocol.data_received(request)
        async with asyncio.timeout(2):
            while len(connection.writes) < until:
                await asyncio.sleep(0.005)
        await asyncio.sleep(0.02)  # a second write, if one were coming, would be here now
        return connection.writes
    finally:
        protocol.connection_lost(None)


async def test_a_json_reply_is_one_write_holding_head_and_body() -> None:
    writes = await serve_one(b"POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
    assert len(writes) == 1
    head, _, body = writes[0].partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 202 ") and b"content-length: 14" in head
    assert body == b'{"accepted":5}'


async def test_a_head_request_is_one_write_of_the_head() -> None:
    writes = await serve_one(b"HEAD /ingest HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 202 ")
    assert writes[0].endswith(b"\r\n\r\n")


async def test_a_streamed_reply_sends_its_head_before_the_first_chunk_exists() -> None:
    first_chunk_allowed.clear()
    writes = await serve_one(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
    assert len(writes) == 1 and writes[0].startswith(b"HTTP/1.1 200 ")
    assert b"transfer-encoding: chunked" in writes[0]


async def test_expect_100_continue_is_answered_before_the_reply() -> None:
    writes = await serve_one(
        b"POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 3\r\nExpect: 100-continue\r\n\r\n",
        until=1,
    )
    assert writes == [b"HTTP/1.1 100 Continue\r\n\r\n"]


async def test_replies_on_a_real_socket_keep_the_connection_alive() -> None:
    """Through uvicorn on a real port: a JSON reply, a HEAD, a streamed reply and another JSON
    reply on one keep-alive connection, each complete and in order."""
    first_chunk_allowed.set()
    settings = ServiceSettings(host="127.0.0.1", port=free_port())
    async with listening(settings):
        reader, writer = await asyncio.open_connection("127.0.0.1", settings.port)
        try:
            async with asyncio.timeout(5):
                writer.write(b"POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\nab")
                assert (await reader.readuntil(b'{"accepted":2}')).startswith(b"HTTP/1.1 202")
                writer.write(b"HEAD /ingest HTTP/1.1\r\nHost: x\r\n\r\n")
                assert b"content-length: 14" in await reader.readuntil(b"\r\n\r\n")
                writer.write(b"GET /stream HTTP/1.1\r\nHost: x\r\n\r\n")
                streamed = await reader.readuntil(b"0\r\n\r\n")
                assert streamed.startswith(b"HTTP/1.1 200") and streamed.endswith(
                    b"3\r\none\r\n3\r\ntwo\r\n0\r\n\r\n"
                )
                writer.write(b"POST /ingest HTTP/1.1\r\nHost: x\r\nContent-Length: 1\r\n\r\nc")
                assert (await reader.readuntil(b'{"accepted":1}')).startswith(b"HTTP/1.1 202")
        finally:
            writer.close()
