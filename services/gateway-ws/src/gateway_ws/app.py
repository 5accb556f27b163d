"""Wiring: Starlette app with the WebSocket endpoint ``/ingest/stream`` (``stream``) plus
``/health``, ``/ready``, ``/metrics``.

``/ingest/stream`` consumes the streaming protocol (``connect``, ``data``, ``ping``; see the
README) and produces ``PointBatch``es that join the ``PointBundle`` of their partition on
``dp.raw.<domain>.part.<p>`` (``Coalescer``; rejected points on ``dp.rejected.ws``); each ``ack``
is sent only after JetStream acknowledged the bundles holding its points. Access is decided by
the gateway base (``tributary_ingest.gateway``) as on gateway-http; refusals are audited on
``audit.gateway-ws.*``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import structlog
from nats.aio.client import Client
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute

from gateway_ws.metrics import BUNDLE_POINTS, ERRORS
from gateway_ws.registry import SessionRegistry
from gateway_ws.resume import ResumeStore
from gateway_ws.settings import GatewayWsSettings
from gateway_ws.stream import STREAM_PATH, WsContext, endpoint, session_limits
from tributary_access.guard import HeaderLimits
from tributary_contracts import Transport
from tributary_ingest.bus import Connect
from tributary_ingest.gateway import GatewayMetrics, open_gateway
from tributary_ingest.http import Slot
from tributary_runtime.ops import ops_routes

SERVICE_NAME = "gateway-ws"
TRANSPORT_FRAME_FACTOR = 4
"""Frames up to this × ``MAX_FRAME_BYTES`` get an error reply; larger ones close with 1009."""

log = structlog.get_logger("gateway_ws")


def create_app(
    settings: GatewayWsSettings,
    *,
    nats_client: Client | None = None,
    connect: Connect | None = None,
) -> Starlette:
    """Build the gateway. ``nats_client`` (used, never closed) or ``connect`` (its client is
    closed on shutdown) replace the default ``connect_nats(settings)`` connection.

    ``app.state.sessions`` is the ``SessionRegistry``; ``serve_options`` drains it on shutdown.
    """
    slot: Slot[WsContext] = Slot()
    registry = SessionRegistry(settings.max_sessions_per_key)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        gateway = await open_gateway(
            settings,
            SERVICE_NAME,
            Transport.WS,
            GatewayMetrics(ERRORS, bundle_points=BUNDLE_POINTS),
            linger_seconds=settings.bundle_linger_ms / 1000,
            nats_client=nats_client,
            connect=connect,
        )
        resume = await ResumeStore.open(gateway.js, settings.namespace)
        slot.value = WsContext(gateway, resume, registry, session_limits(settings))
        log.info("started", port=settings.port, nats_url=settings.nats_url)
        try:
            yield
        finally:
            # Sessions still open here were not drained before shutdown (e.g. a test running
            # the app without it): drain them now, before the bus goes away.
            await registry.drain(settings.shutdown_timeout_seconds)
            slot.value = None
            await gateway.close()

    async def ready_check() -> dict[str, bool]:
        ctx = slot.value
        return await ctx.gateway.ready() if ctx else {"nats": False, "stream": False}

    routes = [WebSocketRoute(STREAM_PATH, endpoint(slot)), *ops_routes(ready_check)]
    app = Starlette(routes=routes, lifespan=lifespan)
    app.add_middleware(
        HeaderLimits, max_bytes=settings.max_header_bytes, max_count=settings.max_header_count
    )
    app.state.sessions = registry
    return app


def serve_options(app: Starlette, settings: GatewayWsSettings) -> dict[str, Any]:
    """What gateway-ws adds to ``tributary_runtime.serve``: its WebSocket limits (frame size,
    keepalive) and, on shutdown, stop accepting and let every session ack what is durable and
    close with 1001 "going away" before uvicorn's own shutdown closes sockets with 1012."""
    sessions: SessionRegistry = app.state.sessions

    async def drain_sessions() -> None:
        await sessions.drain(settings.shutdown_timeout_seconds)

    return {
        "before_shutdown": drain_sessions,
        "ws": "websockets-sansio",
        "ws_max_size": settings.max_frame_bytes * TRANSPORT_FRAME_FACTOR,
        "ws_ping_interval": settings.ping_interval_seconds or None,
        "ws_ping_timeout": settings.ping_timeout_seconds,
        "ws_per_message_deflate": False,
    }
