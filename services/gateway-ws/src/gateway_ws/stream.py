"""``WS /ingest/stream``: one socket → one ``Session`` over the gateway's context.

``ingest_stream(ctx, websocket)`` serves one socket: the connection spends a token of the client
IP's budget, then the ``Session`` runs the protocol with the base's access checks
(``tributary_ingest.gateway``): ``connect`` authenticates the key and checks its role and scope
for the connect's domain/source, every frame spends a token of the IP's budget, every ``data``
the source's live/backfill point budgets. The base's refusals (``Reply``: 401/403/413/429/503)
become the protocol's error codes (``protocol_error``).
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from starlette.websockets import WebSocket

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
from gateway_ws.resume import ResumeStore
from gateway_ws.session import ChannelClosed, Session, SessionLimits
from gateway_ws.settings import GatewayWsSettings
from tributary_access.apikeys import Action
from tributary_access.guard import client_ip
from tributary_ingest.gateway import GatewayContext
from tributary_ingest.http import Slot
from tributary_runtime.ops import Reply

STREAM_PATH = "/ingest/stream"

ERROR_CODES = {
    401: ErrorCode.UNAUTHORIZED,
    403: ErrorCode.FORBIDDEN,
    413: ErrorCode.BAD_BATCH,  # more points than a burst: never fits, split the message
    429: ErrorCode.RATE_LIMITED,
    503: ErrorCode.BUS_UNAVAILABLE,
}


@dataclass(frozen=True)
class WsContext:
    """What the endpoint uses: the base's context (``gateway``), the resume store and this
    process's sessions with their limits."""

    gateway: GatewayContext[GatewayWsSettings]
    resume: ResumeStore
    registry: SessionRegistry
    limits: SessionLimits


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


def protocol_error(reply: Reply, fatal: bool = False) -> ProtocolError:
    """A refusal of the base as the protocol's ``error`` (``fatal``: closes the session)."""
    retry_after = reply.body.get("retry_after")
    return ProtocolError(
        ERROR_CODES.get(reply.status, ErrorCode.BAD_BATCH),
        str(reply.body.get("error", "refused")),
        retry_after if isinstance(retry_after, int) else None,
        fatal,
    )


async def authorize(
    gateway: GatewayContext[GatewayWsSettings], connect: Connect, ip: str | None
) -> str | ProtocolError:
    """The key's id (for the session limit), or the error to reply (refusals audited)."""
    target = f"WS {STREAM_PATH} connect {connect.domain}/{connect.source_id}"
    try:
        granted = await gateway.authenticate(connect.api_key, ip, target)
        gateway.guard.check(
            granted, Action.WRITE_POINTS, ip, target, connect.domain, connect.source_id
        )
    except Reply as reply:
        return protocol_error(reply, fatal=True)
    return granted.key_id


async def ingest_stream(ctx: WsContext, websocket: WebSocket) -> None:
    """WS /ingest/stream: connect/data/ping → connected/ack/error/pong; points → dp.raw."""
    await websocket.accept()
    channel = StarletteChannel(websocket)
    if ctx.registry.draining:
        await channel.close(CloseCode.GOING_AWAY, "going away")
        return
    access = ctx.gateway.guard
    ip = client_ip(websocket.scope)
    try:
        access.admit(ip, "connections and frames")
    except Reply as reply:
        await channel.send(encode(error_reply(protocol_error(reply, fatal=True))))
        await channel.close(CloseCode.TRY_AGAIN_LATER, "rate limited")
        return

    async def authorize_connect(connect: Connect) -> str | ProtocolError:
        return await authorize(ctx.gateway, connect, ip)

    def admit_frame() -> ProtocolError | None:
        try:
            access.admit(ip, "frames")
        except Reply as reply:
            return protocol_error(reply)
        return None

    def admit_points(
        domain: str, source_id: str, batch: NormalizedBatch, received_at: datetime
    ) -> ProtocolError | None:
        try:
            access.admit_points(domain, source_id, (p.ts for p in batch.accepted), received_at)
        except Reply as reply:
            return protocol_error(reply)
        return None

    session = Session(
        channel,
        ctx.limits,
        authorize=authorize_connect,
        publisher=ctx.gateway.publisher,
        registry=ctx.registry,
        resume=ctx.resume,
        admit_frame=admit_frame,
        admit_points=admit_points,
    )
    ctx.registry.add(session)
    try:
        await session.run()
    finally:
        ctx.registry.discard(session)


def endpoint(slot: Slot[WsContext]) -> Callable[[WebSocket], Awaitable[None]]:
    """``ingest_stream`` as a Starlette endpoint: before startup (empty ``slot``) a socket is
    accepted and closed with 1001 "going away"."""

    async def run(websocket: WebSocket) -> None:
        ctx = slot.value
        if ctx is None:
            await websocket.accept()
            await StarletteChannel(websocket).close(CloseCode.GOING_AWAY, "going away")
            return
        await ingest_stream(ctx, websocket)

    return run


def session_limits(settings: GatewayWsSettings) -> SessionLimits:
    return SessionLimits(
        max_unacked=settings.max_unacked_batches,
        max_frame_bytes=settings.max_frame_bytes,
        max_points_per_message=settings.max_points_per_message,
        connect_timeout=settings.connect_timeout_seconds,
        idle_timeout=settings.idle_timeout_seconds,
        publish_timeout=settings.publish_timeout_seconds,
        retry_after=settings.retry_after_seconds,
    )
