"""``POST /ingest/data``: ``{"source_id", "domain", "data_points": [...]}`` with an
``X-API-Key`` → a ``PointBatch`` in the ``PointBundle`` of its partition on
``dp.raw.<domain>.part.<p>`` (rejected points on ``dp.rejected.http``); 202 only after JetStream
acknowledged the bundles holding its points.

In order: the live switch ``UNIVERSAL_API_ENABLED`` (404), the client IP's budget (429), the key
(401), the body (400/408/413), the envelope (422/413; a refused body of a selected source goes to
the raw ledger), role and scope (403), ``DISABLED_DOMAINS`` (403), the source's point budgets
(429), then the publish (503 unless acknowledged).

The path is lean: ``IngestShortcut`` sends ``POST /ingest/data`` straight to ``asgi_endpoint``,
past Starlette's exception middleware, router and ``Response`` objects (about a quarter of a
1-point request's CPU).
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import structlog
from starlette.requests import Request
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway_http.context import HttpContext
from gateway_http.metrics import (
    ERRORS,
    POINTS_PUBLISHED,
    POINTS_RECEIVED,
    POINTS_REJECTED,
    count_reply,
)
from gateway_http.normalize import EnvelopeError, normalize_request
from tributary_access.apikeys import Action
from tributary_ingest import http
from tributary_ingest.http import Answer, Slot, answer_of
from tributary_ingest.points import MalformedJson, parse_json
from tributary_runtime.ops import Reply

PATH = "/ingest/data"
DISABLED = Answer(
    404, {"error": "POST /ingest/data is not enabled on this gateway (UNIVERSAL_API_ENABLED=false)"}
)

log = structlog.get_logger("gateway_http.ingest")


async def ingest_data(ctx: HttpContext, request: Request) -> Answer:
    """POST /ingest/data (module docstring); refusals are raised as ``Reply``."""
    if not ctx.universal_api_enabled():
        return DISABLED
    received_at = datetime.now(UTC)
    gateway, settings = ctx.gateway, ctx.settings
    granted = await http.authenticate(gateway, request)
    body = await http.read_body(request.scope, request.receive, settings.max_body_bytes, ctx.stall)
    if not body:
        raise Reply(400, {"error": "request body is empty; expected a JSON object"})
    try:
        parsed = parse_json(body)
        normalized = normalize_request(parsed, received_at, settings.max_points_per_request)
    except MalformedJson as exc:
        raise Reply(400, {"error": str(exc)}) from None
    except EnvelopeError as exc:
        status = 413 if exc.too_large else 422
        if isinstance(parsed, dict):  # a selected source's refused input goes to the ledger
            await record_refused(ctx, parsed, received_at, body, status, exc.message)
        raise Reply(status, {"error": exc.message, "field": exc.field}) from None
    domain, source_id = normalized.domain, normalized.source_id
    http.check(gateway, request, granted, Action.WRITE_POINTS, domain, source_id)
    if domain in ctx.disabled_domains():
        raise Reply(403, {"error": f"domain {domain!r} is disabled on this gateway "
                          "(DISABLED_DOMAINS)", "field": "domain"})
    accepted, rejected = normalized.accepted, normalized.rejected
    gateway.guard.admit_points(domain, source_id, (p.ts for p in accepted), received_at)
    POINTS_RECEIVED.inc(len(accepted) + len(rejected))
    for rejection in rejected:
        POINTS_REJECTED.labels(rejection.code).inc()
    await gateway.publish(domain, source_id, received_at, accepted, rejected)
    POINTS_PUBLISHED.inc(len(accepted))
    reply = [r.to_reply() for r in rejected]
    if ctx.ledger.wants(domain, source_id):  # opt-in raw ledger
        await ctx.ledger.record(
            domain, source_id, received_at, body, accepted=accepted, rejections=rejected,
            status=202 if accepted else 422, content_type=request.headers.get("content-type"),
        )
    if not accepted:
        # Nothing was accepted: a 2xx would tell a status-only client that its data is in.
        return Answer(
            422, {"error": "no data point was accepted", "accepted": 0, "rejected": reply}
        )
    return Answer(202, {"accepted": len(accepted), "rejected": reply})


def count(_: Request, answer: Answer) -> None:
    """``gateway_http_requests`` by status (the Starlette route's answers)."""
    count_reply(answer.status)


async def record_refused(
    ctx: HttpContext, parsed: dict[str, Any], received_at: datetime, body: bytes, status: int,
    error: str,
) -> None:
    domain, source = parsed.get("domain"), parsed.get("source_id")
    if isinstance(domain, str) and isinstance(source, str):
        await ctx.ledger.record(domain, source, received_at, body, status=status, error=error)


def asgi_endpoint(slot: Slot[HttpContext], not_started: Callable[[], Reply]) -> ASGIApp:
    """``ingest_data`` as a plain ASGI app: its answer (a ``Reply`` too, or a logged 500)
    written straight to ``send``, counted by status."""

    async def endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        try:
            ctx = slot.value
            if ctx is None:
                raise not_started()
            answer = await ingest_data(ctx, Request(scope, receive))
        except Reply as reply:
            answer = answer_of(reply)
        except Exception as exc:
            ERRORS.labels("handler", "unexpected").inc()
            log.exception("ingest_failed", error=repr(exc))
            answer = http.internal_error()
        count_reply(answer.status)
        assert answer.body is not None
        await http.send_json(send, answer.status, answer.body, answer.headers)

    return endpoint


class IngestShortcut:
    """ASGI middleware: ``POST /ingest/data`` goes to ``endpoint``; everything else (other
    methods too) to the router. It sits inside ``HeaderLimits``, so header bounds apply alike."""

    def __init__(self, app: ASGIApp, endpoint: ASGIApp) -> None:
        self.app = app
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == PATH and scope["method"] == "POST":
            await self.endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)
