"""One WebSocket session: the protocol's state machine over a ``Channel`` (any socket).

Two coroutines per session. The *reader* takes one reply slot of the session's window
(``MAX_UNACKED_BATCHES``) before it reads each frame, turns the frame into a reply — an ``ack``
after publishing a ``data`` message with ``publish_async`` (no waiting), or a ready ``error``,
``pong`` or ``connected`` — and queues it. The *writer* sends the queued replies in order; an
``ack`` first waits for its PubAcks, so several data messages are in flight while acks still go
back in order. A slot is released only when its reply is sent, so a client that stops reading
acks stops the reader, and uvicorn then stops reading the socket (TCP backpressure): nothing is
buffered without bound and nothing is dropped.

A session ends when the peer disconnects, on a fatal error (bad key, bus unavailable: error
reply, then a close code), idle or connect timeout, replacement by a newer session of the same
source, or shutdown; in every case the writer first finishes what is in flight — acking what
became durable while the socket is still open — and records the resume sequence.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from enum import Enum
from typing import Any, Protocol

import structlog

from gateway_ws.metrics import (
    ACK_LATENCY,
    BATCHES_IN_FLIGHT,
    ERRORS,
    MESSAGES,
    POINTS_PUBLISHED,
    POINTS_RECEIVED,
    POINTS_REJECTED,
    PROTOCOL_ERRORS,
    READS_PAUSED,
    SESSIONS_CLOSED,
)
from gateway_ws.protocol import (
    CloseCode,
    Connect,
    Data,
    ErrorCode,
    NormalizedBatch,
    Ping,
    ProtocolError,
    ack_reply,
    connected_reply,
    encode,
    error_reply,
    normalize_batch,
    parse_message,
    pong_reply,
)
from tributary_ingest.batches import PublishOutcome
from tributary_ingest.coalesce import settle
from tributary_runtime.publish import PublishError

log = structlog.get_logger("gateway_ws.session")

MAX_CLOSE_REASON_BYTES = 123  # RFC 6455 §5.5: control frame payload ≤ 125 bytes incl. the code


class ChannelClosed(Exception):
    """The peer is gone; nothing more can be sent."""


class Channel(Protocol):
    """The socket as the session sees it."""

    async def receive(self) -> str | bytes | None:
        """The next frame, or None once the peer disconnected."""
        ...

    async def send(self, text: str) -> None:
        """Send one text frame; ``ChannelClosed`` if the peer is gone."""
        ...

    async def close(self, code: int, reason: str) -> None: ...


class Publisher(Protocol):
    """The gateway's ``Coalescer``: queues points, the future is answered by their PubAck."""

    def submit(
        self,
        domain: str,
        source_id: str,
        received_at: datetime,
        points: Any,
        rejections: Any = (),
    ) -> asyncio.Future[PublishOutcome]: ...


class Registry(Protocol):
    """Who else is connected: sessions per key, one session per (domain, source)."""

    def claim(self, session: Session, key_id: str) -> Session | ProtocolError | None:
        """Register ``session`` (connected as ``key_id``); the session it replaces, or why not."""
        ...

    def release(self, session: Session) -> None: ...


class Resume(Protocol):
    async def last_sequence(self, domain: str, source_id: str) -> int | None: ...
    def tracker(self, domain: str, source_id: str, session_id: str) -> Tracker: ...


class Tracker(Protocol):
    def advance(self, sequence: int) -> None: ...
    async def close(self, timeout: float) -> None: ...


Authorize = Callable[[Connect], Awaitable["str | ProtocolError"]]
"""A ``connect`` (key, domain, source) → an id of the key (for the per-key session limit) or
the error to reply (401-like ``unauthorized``, 403-like ``forbidden``, ``rate_limited``)."""

AdmitFrame = Callable[[], "ProtocolError | None"]
"""Spend one token of the client IP's frame budget, or the ``rate_limited`` error."""

AdmitPoints = Callable[[str, str, NormalizedBatch, datetime], "ProtocolError | None"]
"""(domain, source_id, points, received_at): spend the source's live/backfill budgets for the
accepted points, or the error (nothing is then published nor acked)."""


_MESSAGES_RATE_LIMITED = MESSAGES.labels("rate_limited")
_MESSAGES_DATA = MESSAGES.labels("data")
_MESSAGES_PING = MESSAGES.labels("ping")
_MESSAGES_CONNECT = MESSAGES.labels("connect")
_MESSAGES_INVALID = MESSAGES.labels("invalid")


def _admit_all(*_: Any) -> ProtocolError | None:
    return None


@dataclass(frozen=True)
class SessionLimits:
    max_unacked: int = 100
    max_frame_bytes: int = 1024 * 1024
    max_points_per_message: int = 5_000
    connect_timeout: float = 10.0
    idle_timeout: float = 60.0
    publish_timeout: float = 5.0
    retry_after: int = 2  # of a bus_unavailable error


class State(Enum):
    AWAITING_CONNECT = "awaiting_connect"
    CONNECTED = "connected"
    CLOSING = "closing"


@dataclass
class DataSlot:
    """An ack owed: the outcome of its points' bundles and the reply to send once it is in."""

    submitted: asyncio.Future[PublishOutcome]
    normalized: NormalizedBatch
    received: float  # perf_counter when the frame was read
    deadline: float  # loop time by which every PubAck must be in


@dataclass
class ReadySlot:
    reply: dict[str, Any]
    fatal: ProtocolError | None = None  # an error after which the session closes


_END = object()


class Session:
    """See the module docstring. ``run()`` serves the socket until the session ends."""

    _loop: asyncio.AbstractEventLoop  # the loop ``run`` runs in

    def __init__(
        self,
        channel: Channel,
        limits: SessionLimits,
        *,
        authorize: Authorize,
        publisher: Publisher,
        registry: Registry,
        resume: Resume,
        admit_frame: AdmitFrame = _admit_all,
        admit_points: AdmitPoints = _admit_all,
    ) -> None:
        self.id = uuid.uuid4().hex
        self._admit_frame = admit_frame
        self._admit_points = admit_points
        self.channel = channel
        self.limits = limits
        self._authorize = authorize
        self._publisher = publisher
        self._registry = registry
        self._resume = resume
        self.state = State.AWAITING_CONNECT
        self.domain = ""
        self.source_id = ""
        self.key_id: str | None = None
        self._tracker: Tracker | None = None
        self._window = asyncio.Semaphore(limits.max_unacked)
        self._replies: asyncio.Queue[object] = asyncio.Queue()
        self._close: tuple[int, str] | None = None
        self._peer_gone = False
        self._failed = False  # a fatal reply was sent: later replies are not sent
        self._reader: asyncio.Task[None] | None = None
        self._interruptible = False  # the reader waits for a slot or a frame
        self._data_in_flight = 0
        self.max_in_flight_seen = 0  # high-water mark of owed replies (tests, diagnostics)
        self._owed = 0
        self._last_frame = 0.0  # loop time the last frame arrived
        self._idle_timer: asyncio.TimerHandle | None = None
        self.finished = asyncio.Event()

    # -- control from outside -------------------------------------------------------------
    def stop(self, code: int, reason: str) -> None:
        """End the session: read nothing more, ack what becomes durable, close with ``code``."""
        if self._close is None:
            self._close = (code, reason)
        self.state = State.CLOSING
        if self._interruptible and self._reader is not None:
            self._reader.cancel()

    @property
    def owed(self) -> int:
        return self._owed

    # -- main -----------------------------------------------------------------------------
    async def run(self) -> None:
        self._loop = asyncio.get_running_loop()
        writer = asyncio.create_task(self._write_loop())
        self._reader = asyncio.current_task()
        try:
            await self._read_loop()
        except asyncio.CancelledError:
            if self.state is not State.CLOSING:
                raise  # cancelled by someone other than stop(): the server is going down hard
            task = asyncio.current_task()
            if task is not None:
                task.uncancel()
        except Exception as exc:
            ERRORS.labels("session", type(exc).__name__[:40]).inc()
            log.exception("session_failed", session_id=self.id, error=repr(exc))
            self._set_close(CloseCode.INTERNAL_ERROR, "internal error; it was logged")
        finally:
            self._reader = None
            if self._idle_timer is not None:
                self._idle_timer.cancel()
            self._replies.put_nowait(_END)
            try:
                await writer
            finally:
                if self.key_id is not None:
                    self._registry.release(self)
                code = 1006 if self._peer_gone or self._close is None else self._close[0]
                SESSIONS_CLOSED.labels(str(code)).inc()
                self.finished.set()

    def _set_close(self, code: int, reason: str) -> None:
        if self._close is None:
            self._close = (code, reason)
        self.state = State.CLOSING

    # -- reader ---------------------------------------------------------------------------
    async def _read_loop(self) -> None:
        connect_deadline = self._loop.time() + self.limits.connect_timeout
        while self.state is not State.CLOSING:
            if self._window.locked():
                READS_PAUSED.inc()
            self._interruptible = True
            try:
                await self._window.acquire()
                frame = await self._receive(connect_deadline)
            finally:
                self._interruptible = False
            if frame is None:
                self._window.release()
                if self._peer_gone:
                    return
                continue  # the connect timeout: the session is closing
            self._owe()
            await self._handle(frame)

    async def _receive(self, connect_deadline: float) -> str | bytes | None:
        """The next frame; None after a disconnect or the connect timeout (which ends the
        session). Once connected no timer is armed per frame: ``_idle_check`` ends an idle
        session (a timeout per frame cost ≈ 8 µs, 5 % of a single reading's CPU here)."""
        if self.state is State.AWAITING_CONNECT:
            try:
                async with asyncio.timeout_at(connect_deadline):
                    frame = await self.channel.receive()
            except TimeoutError:
                self._set_close(
                    CloseCode.POLICY_VIOLATION,
                    f"no connect within {self.limits.connect_timeout:g} s",
                )
                return None
        else:
            frame = await self.channel.receive()
        self._last_frame = self._loop.time()
        if frame is None:
            self._peer_gone = True
            self.state = State.CLOSING
        return frame

    def _idle_check(self) -> None:
        """Runs ``idle_timeout`` after the session connected, then again each time: a session
        that received no frame for ``idle_timeout`` and owes no reply ends with 1000 "idle
        timeout"; one that owes replies is looked at again later."""
        self._idle_timer = None
        if self.state is not State.CONNECTED:
            return
        idle = self.limits.idle_timeout
        quiet = self._loop.time() - self._last_frame
        if quiet >= idle and self._owed == 0:
            self.stop(CloseCode.NORMAL, "idle timeout")
            return
        self._idle_timer = self._loop.call_later(
            idle - quiet if quiet < idle else idle, self._idle_check
        )

    def _owe(self) -> None:
        self._owed += 1
        if self._owed > self.max_in_flight_seen:
            self.max_in_flight_seen = self._owed

    async def _handle(self, frame: str | bytes) -> None:
        refused = self._admit_frame()
        if refused is not None:
            _MESSAGES_RATE_LIMITED.inc()
            self._reply_error(refused)
            return
        message = parse_message(frame, self.limits.max_frame_bytes)
        if isinstance(message, Data):
            _MESSAGES_DATA.inc()
            if self.state is not State.CONNECTED:
                self._reply_error(
                    ProtocolError(ErrorCode.NOT_CONNECTED, "send connect before data")
                )
                return
            await self._handle_data(message)
        elif isinstance(message, Ping):
            _MESSAGES_PING.inc()
            self._replies.put_nowait(ReadySlot(pong_reply(message)))
        elif isinstance(message, Connect):
            _MESSAGES_CONNECT.inc()
            await self._handle_connect(message)
        else:
            _MESSAGES_INVALID.inc()
            self._reply_error(message)

    def _reply_error(self, error: ProtocolError) -> None:
        PROTOCOL_ERRORS.labels(error.code.value).inc()
        fatal = error if error.fatal else None
        self._replies.put_nowait(ReadySlot(error_reply(error), fatal))
        if fatal is not None:
            code = (
                CloseCode.POLICY_VIOLATION
                if error.code in (ErrorCode.UNAUTHORIZED, ErrorCode.FORBIDDEN)
                else CloseCode.TRY_AGAIN_LATER
            )
            self._set_close(code, error.reason)

    async def _handle_connect(self, message: Connect) -> None:
        if self.state is State.CONNECTED:
            self._reply_error(
                ProtocolError(
                    ErrorCode.ALREADY_CONNECTED,
                    f"this session is already connected as {self.domain}/{self.source_id}; "
                    "open another socket for another source",
                )
            )
            return
        key_id = await self._authorize(message)
        if isinstance(key_id, ProtocolError):
            self._reply_error(key_id)
            return
        self.domain, self.source_id = message.domain, message.source_id
        claimed = self._registry.claim(self, key_id)
        if isinstance(claimed, ProtocolError):
            self._reply_error(claimed)
            return
        self.key_id = key_id
        if claimed is not None:
            # The source's previous session (often a half-dead socket of the same client) ends
            # first, so the resume sequence below includes everything it got acknowledged.
            claimed.stop(CloseCode.REPLACED, "replaced by a newer session for this source")
            try:
                async with asyncio.timeout(self.limits.publish_timeout + 1.0):
                    await claimed.finished.wait()
            except TimeoutError:
                ERRORS.labels("session", "replace_timeout").inc()
        last_sequence = None
        if message.resume:
            try:
                last_sequence = await self._resume.last_sequence(self.domain, self.source_id)
            except Exception as exc:
                ERRORS.labels("resume_read", type(exc).__name__[:40]).inc()
                self._reply_error(
                    ProtocolError(
                        ErrorCode.BUS_UNAVAILABLE,
                        "the resume sequence could not be read; reconnect later",
                        self.limits.retry_after,
                    )
                )
                return
        self._tracker = self._resume.tracker(self.domain, self.source_id, self.id)
        self.state = State.CONNECTED
        self._idle_timer = self._loop.call_later(self.limits.idle_timeout, self._idle_check)
        structlog.contextvars.bind_contextvars(
            session_id=self.id, domain=self.domain, source_id=self.source_id
        )
        self._replies.put_nowait(ReadySlot(connected_reply(self.id, message.resume, last_sequence)))

    async def _handle_data(self, message: Data) -> None:
        batch = message.batch
        limit = self.limits.max_points_per_message
        if len(batch) > limit:
            self._reply_error(
                ProtocolError(
                    ErrorCode.BAD_BATCH,
                    f"batch has {len(batch)} points; at most {limit} per data message",
                )
            )
            return
        received = time.perf_counter()
        received_at = datetime.now(UTC)
        normalized = normalize_batch(batch, received_at)
        refused = self._admit_points(self.domain, self.source_id, normalized, received_at)
        if refused is not None:
            self._reply_error(refused)
            return
        POINTS_RECEIVED.inc(len(batch))
        for rejection in normalized.rejected:
            POINTS_REJECTED.labels(rejection.code).inc()
        submitted = self._publisher.submit(
            self.domain,
            self.source_id,
            received_at,
            normalized.accepted,
            normalized.rejected,
        )
        deadline = self._loop.time() + self.limits.publish_timeout
        self._data_in_flight += 1
        BATCHES_IN_FLIGHT.inc()
        self._replies.put_nowait(DataSlot(submitted, normalized, received, deadline))

    # -- writer ---------------------------------------------------------------------------
    async def _write_loop(self) -> None:
        while True:
            slot = await self._replies.get()
            if slot is _END:
                break
            try:
                if isinstance(slot, DataSlot):
                    await self._finish_data(slot)
                elif isinstance(slot, ReadySlot):
                    if not self._failed:
                        await self._send(slot.reply)
                        if slot.fatal is not None:
                            self._failed = True
            finally:
                self._owed -= 1
                self._window.release()
        if self._tracker is not None:
            await self._tracker.close(self.limits.publish_timeout)
        if self._close is not None and not self._peer_gone:
            code, reason = self._close
            try:
                await self.channel.close(code, _truncate(reason))
            except ChannelClosed:
                pass

    async def _finish_data(self, slot: DataSlot) -> None:
        try:
            if self._failed:
                slot.submitted.cancel()
                return
            try:
                rejected_ok = (await settle(slot.submitted, slot.deadline)).rejected_published
            except PublishError as exc:
                ERRORS.labels("publish", exc.error_type).inc()
                error = _bus_unavailable(exc, self.limits.retry_after)
                PROTOCOL_ERRORS.labels(error.code.value).inc()
                self._failed = True
                await self._send(error_reply(error))
                self.stop(CloseCode.TRY_AGAIN_LATER, error.reason)
                return
            if not rejected_ok:
                ERRORS.labels("publish_rejected", "not_acked").inc()
            POINTS_PUBLISHED.inc(len(slot.normalized.accepted))
            sequence = slot.normalized.sequence_up_to
            if sequence is not None and self._tracker is not None:
                self._tracker.advance(sequence)
            await self._send(ack_reply(slot.normalized))
            ACK_LATENCY.observe(time.perf_counter() - slot.received)
        finally:
            self._data_in_flight -= 1
            BATCHES_IN_FLIGHT.dec()

    async def _send(self, reply: dict[str, Any]) -> None:
        if self._peer_gone:
            return
        try:
            await self.channel.send(encode(reply))
        except ChannelClosed:
            self._peer_gone = True
            self.stop(1006, "peer gone")


def _bus_unavailable(exc: PublishError, retry_after: int) -> ProtocolError:
    return ProtocolError(
        ErrorCode.BUS_UNAVAILABLE,
        f"the message bus did not acknowledge ({exc.error_type}); this message and any later "
        "ones were not acknowledged: reconnect with resume and resend them",
        retry_after,
    )


def _truncate(reason: str) -> str:
    data = reason.encode()
    if len(data) <= MAX_CLOSE_REASON_BYTES:
        return reason
    return data[: MAX_CLOSE_REASON_BYTES - 3].decode(errors="ignore") + "..."
