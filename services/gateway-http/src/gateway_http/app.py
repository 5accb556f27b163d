"""Wiring: the Starlette app of gateway-http. The lifespan opens the ``HttpContext``
(``context``) into a ``Slot``; every handler module gets it from there:

- ``POST /ingest/data`` — ``ingest`` (the lean ASGI path through ``IngestShortcut``);
- ``GET|PUT|DELETE /streams/{domain}/{source_id}/{stream_id}/config`` — ``config_api``;
- ``/keys`` — ``keys_api``;
- the legacy IoT endpoints — ``legacy``; their operational probes — ``legacy_ops``;
- ``POST /devices/provision`` — ``provision``;
- ``/openapi.json``, ``/health``, ``/ready``, ``/metrics``.

Middleware, outermost first: ``HeaderLimits`` (431), ``IngestShortcut``, ``LegacyDeprecation``.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from importlib import resources

import orjson
import structlog
from nats.aio.client import Client
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from gateway_http import config_api, ingest, keys_api, legacy, legacy_ops, provision
from gateway_http.context import METRICS, HttpContext, open_context
from gateway_http.deprecation import LegacyDeprecation
from gateway_http.metrics import ERRORS
from gateway_http.settings import GatewayHttpSettings
from tributary_access.guard import HeaderLimits
from tributary_ingest import gateway
from tributary_ingest.bus import Connect
from tributary_ingest.http import Count, Handler, Slot, endpoint
from tributary_runtime.ops import ops_routes

CONFIG_METHODS = ["GET", "PUT", "DELETE"]
OPENAPI_DOCUMENT = resources.files("gateway_http").joinpath("openapi.json").read_bytes()

log = structlog.get_logger("gateway_http")


def create_app(
    settings: GatewayHttpSettings,
    *,
    nats_client: Client | None = None,
    connect: Connect | None = None,
) -> Starlette:
    """Build the gateway. ``nats_client`` (used, never closed) or ``connect`` (its client is
    closed on shutdown) replace the default ``connect_nats(settings)`` connection."""
    slot: Slot[HttpContext] = Slot()
    not_started = functools.partial(gateway.not_started, settings, METRICS)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        ctx = await open_context(settings, nats_client=nats_client, connect=connect)
        slot.value = ctx
        log.info("started", port=settings.port, nats_url=settings.nats_url)
        try:
            yield
        finally:
            slot.value = None
            await ctx.close()

    async def ready_check() -> dict[str, bool]:
        ctx = slot.value
        return await ctx.gateway.ready() if ctx else {"nats": False, "stream": False}

    def route(path: str, handler: Handler[HttpContext], methods: list[str], count: Count) -> Route:
        run = endpoint(slot, handler, not_started, ERRORS, count=count)
        return Route(path, run, methods=methods)

    async def openapi(_: Request) -> Response:
        return Response(OPENAPI_DOCUMENT, media_type="application/json")

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        body = orjson.dumps({"error": exc.detail})
        return Response(body, exc.status_code, exc.headers, media_type="application/json")

    routes = [
        route(ingest.PATH, ingest.ingest_data, ["POST"], ingest.count),
        *legacy.routes(slot, not_started),
        *legacy_ops.routes(slot, not_started),
        route(provision.PATH, provision.provision, ["POST"], provision.count),
        route(config_api.PATH, config_api.stream_config, CONFIG_METHODS, config_api.count),
        route("/keys", keys_api.keys, ["GET", "POST"], None),
        route("/keys/{rest:path}", keys_api.keys, ["GET", "POST", "DELETE"], None),
        Route("/openapi.json", openapi, methods=["GET"]),
        *ops_routes(ready_check),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error}
    )
    app.add_middleware(LegacyDeprecation, settings=settings)
    app.add_middleware(ingest.IngestShortcut, endpoint=ingest.asgi_endpoint(slot, not_started))
    app.add_middleware(  # outermost of ours: header bounds apply to the shortcut as well
        HeaderLimits, max_bytes=settings.max_header_bytes, max_count=settings.max_header_count
    )
    return app
