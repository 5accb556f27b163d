"""The HTTP side of the gateway base (``gateway``): reading a request body within its limits,
writing JSON replies, and the endpoint wrapper that turns a handler's ``Reply`` or unexpected
error into its reply.

A handler is a module function ``async def handler(ctx, request) -> Answer`` taking the
service's typed context; ``endpoint(slot, handler, ...)`` makes it a Starlette endpoint once the
lifespan has put the context into ``slot`` (before that: 503, stage ``startup``). Errors keep the
contract's body shape ``{"error": reason, ...}`` (``detail_shape`` gives the legacy IoT
endpoints' ``{"detail": reason, ...}``); 503s carry ``retry_after`` and ``Retry-After``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

import orjson
import structlog
from prometheus_client import Counter
from starlette.requests import Request
from starlette.responses import Response
from starlette.types import Receive, Scope, Send

from tributary_access.access import API_KEY_HEADER, API_KEY_NAME, target_of
from tributary_access.apikeys import Action, Granted, check_access
from tributary_access.guard import client_ip, raw_header
from tributary_ingest.gateway import GatewayContext
from tributary_runtime.ops import Reply, json_response

log = structlog.get_logger("tributary_ingest.http")

C = TypeVar("C")


@dataclass(slots=True)
class Answer:
    """A handler's reply: status, JSON body (None: no body, e.g. 204), extra headers."""

    status: int
    body: dict[str, Any] | None
    headers: dict[str, str] | None = None

    def response(self) -> Response:
        if self.body is None:
            return Response(status_code=self.status, headers=self.headers)
        return json_response(self.status, self.body, self.headers)


def answer_of(reply: Reply) -> Answer:
    return Answer(reply.status, reply.body, reply.headers)


def internal_error() -> Answer:
    """The 500 of an unexpected error (logged by the caller)."""
    return Answer(500, {"error": "internal error; it was logged"})


def detail_shape(answer: Answer) -> Answer:
    """``{"error": reason, ...}`` → ``{"detail": reason, ...}`` (the legacy IoT replies)."""
    body = answer.body
    if body is None or "error" not in body:
        return answer
    shaped = {"detail": body["error"]}
    shaped.update((k, v) for k, v in body.items() if k != "error")
    return Answer(answer.status, shaped, answer.headers)


# -- who asks -----------------------------------------------------------------------------------
MISSING_API_KEY = f"missing {API_KEY_HEADER} header"
"""The 401 reason of a request without a key."""


async def authenticate(
    ctx: GatewayContext[Any], request: Request, what: str = "requests"
) -> Granted:
    """The request's client IP budget (429), then its ``X-API-Key`` (401/403, audited; the key
    store not answering → 503)."""
    scope = request.scope
    ip = client_ip(scope)
    ctx.guard.admit(ip, what)
    return await ctx.authenticate(
        raw_header(scope, API_KEY_NAME), ip, lambda: target_of(scope), MISSING_API_KEY
    )


def check(
    ctx: GatewayContext[Any],
    request: Request,
    granted: Granted,
    action: Action,
    domain: str | None = None,
    source_id: str | None = None,
) -> None:
    """403 (audited) unless ``granted`` may do ``action`` (on ``domain``/``source_id``)."""
    problem = check_access(granted.record, action, domain, source_id)
    if problem is not None:
        scope = request.scope
        ctx.guard.deny(granted, problem, client_ip(scope), target_of(scope))


# -- the body -----------------------------------------------------------------------------------
class StallWatch:
    """The stall timeout of request bodies, with one timer for all of them: a per-request timer
    (``asyncio.timeout``) cost ~5 µs, a sixteenth of a 1-point request's CPU.

    ``read_body`` registers its task with a deadline ``idle_timeout`` ahead, moved on at every
    chunk; a sweep every ``idle_timeout / 4`` (at most 1 s) cancels the tasks past their
    deadline, so a stalled body ends within 1.25 × ``idle_timeout``. Make it inside the running
    loop (a service's context), one per loop."""

    def __init__(self, idle_timeout: float) -> None:
        self.idle_timeout = idle_timeout
        self._interval = min(idle_timeout / 4, 1.0)
        self._loop = asyncio.get_running_loop()
        self._deadlines: dict[asyncio.Task[Any], float] = {}
        self._stalled: set[asyncio.Task[Any]] = set()
        self._sweeping = False

    def watch(self) -> asyncio.Task[Any]:
        """The current task reads a body: cancelled unless it makes progress within
        ``idle_timeout``; returned for ``progress`` and ``done``."""
        loop = self._loop
        task = asyncio.current_task(loop)
        assert task is not None
        self._deadlines[task] = loop.time() + self.idle_timeout
        if not self._sweeping:
            self._sweeping = True
            loop.call_later(self._interval, self._sweep)
        return task

    def progress(self, task: asyncio.Task[Any]) -> None:
        self._deadlines[task] = self._loop.time() + self.idle_timeout

    def done(self, task: asyncio.Task[Any]) -> bool:
        """``task`` stopped reading; whether it was cancelled for stalling (then uncancelled)."""
        self._deadlines.pop(task, None)
        if task in self._stalled:
            self._stalled.discard(task)
            task.uncancel()
            return True
        return False

    def _sweep(self) -> None:
        now = self._loop.time()
        stalled = [task for task, deadline in self._deadlines.items() if deadline <= now]
        for task in stalled:
            del self._deadlines[task]
            self._stalled.add(task)
            task.cancel()
        if self._deadlines:
            self._loop.call_later(self._interval, self._sweep)
        else:
            self._sweeping = False


async def read_body(scope: Scope, receive: Receive, limit: int, stall: StallWatch) -> bytes:
    """The whole request body: 413 beyond ``limit`` bytes (by ``Content-Length`` before reading,
    else while reading), 400 for a non-integer ``Content-Length`` or a client that went away,
    408 when the body stalls (``stall``'s ``idle_timeout`` between two chunks)."""
    declared = raw_header(scope, b"content-length")
    if declared is not None:
        try:
            if int(declared) > limit:
                raise _too_large(limit)
        except ValueError:
            raise Reply(400, {"error": "Content-Length header is not an integer"}) from None
    # The ASGI messages directly: request.stream()'s async generator cost more than the rest of
    # reading a small body.
    chunks: list[bytes] = []
    size = 0
    task = stall.watch()
    try:
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect
                raise Reply(400, {"error": "the client disconnected before sending the body"})
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise _too_large(limit)
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)
            stall.progress(task)
    except asyncio.CancelledError:
        if stall.done(task):
            raise Reply(
                408,
                {"error": f"the request body sent nothing for {stall.idle_timeout:g} s; abandoned"},
            ) from None
        raise
    finally:
        stall.done(task)


def _too_large(limit: int) -> Reply:
    return Reply(413, {"error": f"request body is larger than {limit} bytes"})


# -- replies ------------------------------------------------------------------------------------
async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    """A JSON reply written straight to the ASGI ``send`` (no ``Response`` object)."""
    payload = orjson.dumps(body)
    raw_headers = [
        (b"content-length", str(len(payload)).encode()),
        (b"content-type", b"application/json"),
    ]
    if headers:
        raw_headers.extend(
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
        )
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


class Slot(Generic[C]):
    """Where the lifespan puts the service's context (``value``) for the endpoints; None
    before startup and after shutdown."""

    __slots__ = ("value",)

    def __init__(self) -> None:
        self.value: C | None = None


Handler = Callable[[C, Request], Awaitable[Answer]]
"""A handler: the service's context and the request → its answer (or a raised ``Reply``)."""
Count = Callable[[Request, Answer], None] | None
"""What sees (counts, may add headers to) every answer of an endpoint."""


def endpoint(
    slot: Slot[C],
    handler: Handler[C],
    not_started: Callable[[], Reply],
    errors: Counter,
    *,
    shape: Callable[[Answer], Answer] | None = None,
    count: Count = None,
) -> Callable[[Request], Awaitable[Response]]:
    """``handler`` as a Starlette endpoint: the context from ``slot`` (``not_started()`` — the
    503 — while it is empty), a raised ``Reply`` as its answer, any other exception a logged 500
    (``errors{stage="handler", error_type="unexpected"}``); ``shape`` reshapes error answers,
    ``count`` sees every answer."""

    async def run(request: Request) -> Response:
        try:
            ctx = slot.value
            if ctx is None:
                raise not_started()
            answer = await handler(ctx, request)
        except Reply as reply:
            answer = answer_of(reply)
            if shape is not None:
                answer = shape(answer)
        except Exception as exc:
            errors.labels("handler", "unexpected").inc()
            log.exception("request_failed", path=request.url.path, error=repr(exc))
            answer = internal_error() if shape is None else shape(internal_error())
        if count is not None:
            count(request, answer)
        return answer.response()

    return run
