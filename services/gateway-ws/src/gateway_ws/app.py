"""Wiring: Starlette app with the WebSocket endpoint ``/ingest/stream`` plus ``/health``,
``/ready``, ``/metrics``.

``/ingest/stream`` consumes the streaming protocol (``connect``, ``data``, ``ping``; see the
README) and produces ``PointBatch``es that join the ``PointBundle`` of their partition on
``dp.raw.<domain>.part.<p>`` (``Coalescer``; rejected points on ``dp.rejected.ws``); each ``ack``
is sent only after JetStream acknowledged the bundles holding its points.

Access is decided like on gateway-http (``tributary_runtime``): every frame (and the connection
itself) spends a token of the client IP's budget, ``connect`` checks the key (``unauthorized``)
and its role and scope for the connect's domain/source (``forbidden``), each ``data`` spends the
source's live/backfill point budgets before anything is published; refusals are audited on
``audit.gateway-ws.*``.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from starlette.applications import Starlette
from starlette.routing import WebSocketRoute
from starlette.websockets import WebSocket

from gateway_ws.metrics import BUNDLE_POINTS, ERRORS
from gateway_ws.protocol import (
    CloseCode,
    Connect,
    ErrorCode,
    NormalizedBatch,
    ProtocolError,
    encode,
    error_reply,
)
from gateway_ws.registry import SessionRegistry
from gateway_ws.resume import ResumeStore, ResumeTracker
from gateway_ws.session import ChannelClosed, Session, SessionLimits
from gateway_ws.settings import GatewayWsSettings
from tributary_access.apikeys import Action, ApiKeyStore, Denied
from tributary_access.audit import AuditLog
from tributary_access.guard import HeaderLimits, client_ip
from tributary_access.ratelimit import IngestLimiter, Refusal, split_backfill
from tributary_contracts import DP_RAW, AuditAction, Transport
from tributary_ingest.batches import error_type
from tributary_ingest.bus import Connect as ConnectNats
from tributary_ingest.bus import GatewayBus, open_gateway_bus
from tributary_ingest.coalesce import Coalescer
from tributary_runtime.ops import ops_routes

SERVICE_NAME = "gateway-ws"
STREAM_PATH = "/ingest/stream"
TRANSPORT_FRAME_FACTOR = 4
"""Frames up to this × ``MAX_FRAME_BYTES`` get an error reply; larger ones close with 1009."""

log = structlog.get_logger("gateway_ws")


class StarletteChannel:
    """A Starlette ``WebSocket`` as the session's ``Channel``."""

    def __init__(self, websocket: WebSocket) -> None:
        self._ws = websocket

    async def receive(self) -> str | bytes | None:
        message = await self._ws.receive()
        if message["type"] == "websocket.disconnect":
            return None
        text = message.get("text")
        return text if text is not None else message.get("bytes") or b""

    async def send(self, text: str) -> None:
        try:
            await self._ws.send({"type": "websocket.send", "text": text})
        except Exception as exc:  # WebSocketDisconnect(ed), ClientDisconnected: the peer is gone
            raise ChannelClosed from exc

    async def close(self, code: int, reason: str) -> None:
        try:
            await self._ws.close(code, reason)
        except Exception as exc:
            raise ChannelClosed from exc


@dataclass
class Bus:
    """What the lifespan connects; the endpoint uses it."""

    nc: Client
    js: JetStreamContext
    keys: ApiKeyStore
    resume: ResumeStore
    publisher: Coalescer
    gateway: GatewayBus
    audit: AuditLog
    limiter: IngestLimiter

    async def last_sequence(self, domain: str, source_id: str) -> int | None:
        return await self.resume.last_sequence(domain, source_id)

    def tracker(self, domain: str, source_id: str, session_id: str) -> ResumeTracker:
        return ResumeTracker(self.resume, domain, source_id, session_id)

    async def authorize(self, connect: Connect, ip: str | None) -> str | ProtocolError:
        """The key's id (for the session limit), or the error to reply (audited)."""
        if (refusal := self.limiter.admit_auth(ip)) is not None:
            return rate_limited(refusal, fatal=True)
        try:
            result = await self.keys.authorize(
                connect.api_key, Action.WRITE_POINTS, connect.domain, connect.source_id
            )
        except Exception as exc:
            ERRORS.labels("auth", error_type(exc)).inc()
            return ProtocolError(
                ErrorCode.BUS_UNAVAILABLE, "the API key could not be checked; reconnect later"
            )
        if isinstance(result, Denied):
            if result.status == 401:
                self.limiter.auth_failed(ip)
            self.audit.record_soon(
                self.audit.event(
                    AuditAction.AUTH_FAILED if result.status == 401 else AuditAction.ACCESS_DENIED,
                    outcome="failure",
                    key_id=result.key_id,
                    role=result.role,
                    client_ip=ip,
                    target=f"WS {STREAM_PATH} connect {connect.domain}/{connect.source_id}",
                    reason=result.reason,
                )
            )
            code = ErrorCode.UNAUTHORIZED if result.status == 401 else ErrorCode.FORBIDDEN
            return ProtocolError(code, result.reason)
        return result.key_id


def rate_limited(refusal: Refusal, fatal: bool = False) -> ProtocolError:
    if refusal.status != 429:  # more points than a burst: never fits, split the message
        return ProtocolError(ErrorCode.BAD_BATCH, refusal.reason)
    return ProtocolError(ErrorCode.RATE_LIMITED, refusal.reason, refusal.retry_after, fatal)


def session_limits(settings: GatewayWsSettings) -> SessionLimits:
    return SessionLimits(
        max_unacked=settings.max_unacked_batches,
        max_frame_bytes=settings.max_frame_bytes,
        max_points_per_message=settings.max_points_per_message,
        connect_timeout=settings.connect_timeout_seconds,
        idle_timeout=settings.idle_timeout_seconds,
        publish_timeout=settings.publish_timeout_seconds,
    )


def create_app(
    settings: GatewayWsSettings,
    *,
    nats_client: Client | None = None,
    connect: ConnectNats | None = None,
) -> Starlette:
    """Build the gateway. ``nats_client`` (used, never closed) or ``connect`` (its client is
    closed on shutdown) replace the default ``connect_nats(settings)`` connection.

    ``app.state.sessions`` is the ``SessionRegistry``; ``serve_options`` drains it on shutdown.
    """
    ns = settings.namespace
    raw_stream = ns.stream(DP_RAW)
    state: dict[str, Bus] = {}
    registry = SessionRegistry(settings.max_sessions_per_key)
    limits = session_limits(settings)
    limiter = IngestLimiter(settings)

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        gateway = await open_gateway_bus(
            settings,
            SERVICE_NAME,
            Transport.WS,
            nats_client=nats_client,
            connect=connect,
            linger_seconds=settings.bundle_linger_ms / 1000,
            observe_bundle_points=BUNDLE_POINTS.observe,
        )
        resume = await ResumeStore.open(gateway.js, ns)
        audit = AuditLog(gateway.js, ns, SERVICE_NAME, timeout=settings.publish_timeout_seconds)
        state["bus"] = Bus(
            gateway.nc, gateway.js, gateway.keys, resume, gateway.publisher, gateway, audit,
            limiter,
        )
        log.info("started", port=settings.port, nats_url=settings.nats_url, stream=raw_stream)
        try:
            yield
        finally:
            # Sessions still open here were not drained before shutdown (e.g. a test running
            # the app without it): drain them now, before the bus goes away.
            await registry.drain(settings.shutdown_timeout_seconds)
            state.clear()
            await audit.close()
            await gateway.close()

    async def ready_check() -> dict[str, bool]:
        bus = state.get("bus")
        return await bus.gateway.ready() if bus else {"nats": False, "stream": False}

    async def ingest_stream(websocket: WebSocket) -> None:
        """WS /ingest/stream: connect/data/ping → connected/ack/error/pong; points → dp.raw."""
        bus = state.get("bus")
        await websocket.accept()
        channel = StarletteChannel(websocket)
        if bus is None or registry.draining:
            await channel.close(CloseCode.GOING_AWAY, "going away")
            return
        ip = client_ip(websocket.scope)
        refusal = limiter.admit(ip, "connections and frames")
        if refusal is not None:
            error = rate_limited(refusal, fatal=True)
            await channel.send(encode(error_reply(error)))
            await channel.close(CloseCode.TRY_AGAIN_LATER, "rate limited")
            return

        async def authorize(connect: Connect) -> str | ProtocolError:
            return await bus.authorize(connect, ip)

        def admit_frame() -> ProtocolError | None:
            refused = limiter.admit(ip, "frames")
            return None if refused is None else rate_limited(refused)

        def admit_points(
            domain: str, source_id: str, batch: NormalizedBatch, received_at: datetime
        ) -> ProtocolError | None:
            live, backfill = split_backfill(
                (p.ts for p in batch.accepted), received_at, limiter.backfill_age_seconds
            )
            refused = limiter.admit_points(domain, source_id, live, backfill)
            return None if refused is None else rate_limited(refused)

        session = Session(
            channel,
            limits,
            authorize=authorize,
            publisher=bus.publisher,
            registry=registry,
            resume=bus,
            admit_frame=admit_frame,
            admit_points=admit_points,
        )
        registry.add(session)
        try:
            await session.run()
        finally:
            registry.discard(session)

    routes = [WebSocketRoute(STREAM_PATH, ingest_stream), *ops_routes(ready_check)]
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
