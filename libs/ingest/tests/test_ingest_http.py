"""The HTTP side of the gateway base (``http``): body reading and the endpoint wrapper."""

from __future__ import annotations

import asyncio
from typing import Any

import httpx
import pytest
from prometheus_client import CollectorRegistry, Counter
from pydantic import Field
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.routing import Route

from tributary_ingest.gateway import GatewayMetrics, not_started
from tributary_ingest.http import Answer, Slot, StallWatch, endpoint, read_body
from tributary_runtime.ops import Reply
from tributary_runtime.settings import ServiceSettings


class Settings(ServiceSettings):
    retry_after_seconds: int = Field(default=3)
    publish_timeout_seconds: float = Field(default=2.0)


# -- http --------------------------------------------------------------------------------------
def receiving(*messages: dict[str, Any], stall: bool = False) -> Any:
    queue = list(messages)

    async def receive() -> dict[str, Any]:
        if queue:
            return queue.pop(0)
        if stall:
            await asyncio.sleep(30)
        return {"type": "http.disconnect"}

    return receive


def chunk(data: bytes, more: bool = False) -> dict[str, Any]:
    return {"type": "http.request", "body": data, "more_body": more}


@pytest.mark.parametrize(
    ("headers", "messages", "status"),
    [
        ([(b"content-length", b"99")], [chunk(b"x")], 413),
        ([(b"content-length", b"ten")], [chunk(b"x")], 400),
        ([], [chunk(b"x" * 6, True), chunk(b"x" * 6)], 413),
        ([], [chunk(b"x", True)], 400),  # then the client went away
    ],
)
async def test_read_body_refusals(
    headers: list[tuple[bytes, bytes]], messages: list[dict[str, Any]], status: int
) -> None:
    with pytest.raises(Reply) as refused:
        await read_body({"headers": headers}, receiving(*messages), 10, StallWatch(5))

    assert refused.value.status == status


async def test_read_body_joins_chunks_and_a_stall_is_408_between_chunks() -> None:
    watch = StallWatch(0.1)
    body = await read_body({"headers": []}, receiving(chunk(b"ab", True), chunk(b"c")), 10, watch)
    with pytest.raises(Reply) as stalled:
        await read_body({"headers": []}, receiving(chunk(b"ab", True), stall=True), 10, watch)

    assert body == b"abc"
    assert stalled.value.status == 408


async def test_endpoint_answers_before_startup_replies_and_errors() -> None:
    slot: Slot[str] = Slot()
    counted: list[int] = []
    registry = CollectorRegistry()
    errors_counter = Counter("t_errors", "errors", ["stage", "error_type"], registry=registry)
    settings = Settings()

    async def handler(ctx: str, request: Request) -> Answer:
        if request.url.path == "/refuse":
            raise Reply(429, {"error": "slow down"}, {"Retry-After": "1"})
        if request.url.path == "/bug":
            raise ValueError("bug")
        return Answer(200, {"ctx": ctx})

    run = endpoint(
        slot, handler, lambda: not_started(settings, GatewayMetrics(errors_counter)),
        errors_counter, count=lambda _, answer: counted.append(answer.status),
    )
    app = Starlette(routes=[Route("/{path}", run)])
    transport = httpx.ASGITransport(app=app)
    async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
        early = await client.get("/ok")
        slot.value = "the context"
        ok, refused, bug = [await client.get(p) for p in ("/ok", "/refuse", "/bug")]

    assert (early.status_code, early.headers["Retry-After"]) == (503, "3")
    assert ok.json() == {"ctx": "the context"}
    assert (refused.status_code, refused.headers["Retry-After"]) == (429, "1")
    assert bug.json() == {"error": "internal error; it was logged"}
    assert counted == [503, 200, 429, 500]
    assert errors_counter.labels("handler", "unexpected")._value.get() == 1
