"""Publishing to JetStream: many messages at once with their PubAcks awaited together, a typed
result per message, one set of error labels, and the retry that never drops a message.

- ``publish_all(js, messages, timeout)`` sends every ``Outgoing`` with ``publish_async`` and
  waits (≤ ``timeout``) for all PubAcks together; a ``Published`` says, per message, the PubAck
  or the failure (a stalled send, a closed connection, no ack in time: ``TimeoutError``);
- ``publish_one`` sends one message and raises on failure;
- ``publish_until_acked`` retries the failed ones (same bytes, same ``Nats-Msg-Id``: a retry of
  a publish that did land is deduplicated) with a doubling delay until every one is acked;
- ``ack_error`` turns a PubAck future into its failure (or None), for senders that stream
  (``tributary_ingest.coalesce``);
- ``error_type`` is the bounded label every metric and reply uses for a publish failure
  (``no_stream``, ``timeout``, ``disconnected``, ``api_error``, ``other``); ``PublishError``
  carries it.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

import nats.errors
import nats.js.errors
from nats.js.api import PubAck


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish on JetStream."""

    subject: str
    payload: bytes
    headers: dict[str, str]
    stream: str | None = None
    """Expected stream (``Nats-Expected-Stream``): a publish landing elsewhere fails."""


class PublishError(Exception):
    """JetStream did not acknowledge a publish (or it could not start); ``error_type`` is its
    bounded label."""

    def __init__(self, error_type: str, detail: str) -> None:
        super().__init__(detail)
        self.error_type = error_type


def error_type(exc: BaseException) -> str:
    """Bounded label for a publish failure (a stalled ``publish_async``, which gave up waiting
    for room under ``wait_stall``, is a timeout too)."""
    if isinstance(exc, PublishError):
        return exc.error_type
    if isinstance(exc, nats.js.errors.NoStreamResponseError | nats.errors.NoRespondersError):
        return "no_stream"
    if isinstance(
        exc,
        asyncio.TimeoutError | nats.errors.TimeoutError | nats.js.errors.TooManyStalledMsgsError,
    ):
        return "timeout"
    if isinstance(
        exc,
        nats.errors.ConnectionClosedError
        | nats.errors.ConnectionReconnectingError
        | nats.errors.StaleConnectionError
        | nats.errors.OutboundBufferLimitError
        | nats.errors.ConnectionDrainingError,
    ):
        return "disconnected"
    if isinstance(exc, nats.js.errors.APIError):
        return "api_error"
    return "other"


def ack_error(ack: asyncio.Future[Any], timeout: float) -> BaseException | None:
    """The failure of a finished PubAck future (cancelled: none came within ``timeout``)."""
    if ack.cancelled():
        return TimeoutError(f"no PubAck within {timeout} s")
    return ack.exception()


@dataclass(frozen=True, slots=True)
class Published:
    """What JetStream answered for each message of a ``publish_all``, in order."""

    acks: list[PubAck | None]
    """The PubAck of each message (None where it failed)."""
    errors: list[BaseException | None]
    """The failure of each message (None where it was acked)."""

    @property
    def ok(self) -> bool:
        return all(error is None for error in self.errors)

    @property
    def first_error(self) -> BaseException | None:
        return next((error for error in self.errors if error is not None), None)

    def failed(self, messages: Sequence[Outgoing]) -> list[Outgoing]:
        """The messages (of the ``publish_all`` that returned this) that were not acked."""
        return [m for m, error in zip(messages, self.errors, strict=True) if error is not None]

    def part(self, start: int, end: int) -> Published:
        return Published(self.acks[start:end], self.errors[start:end])

    @staticmethod
    def failure(error: BaseException, count: int) -> Published:
        """``count`` messages that all failed with ``error``."""
        return Published([None] * count, [error] * count)


async def publish_all(js: Any, messages: Sequence[Outgoing], timeout: float) -> Published:
    """Publish ``messages`` (``publish_async``) and wait ≤ ``timeout`` for all their PubAcks."""
    acks: list[PubAck | None] = [None] * len(messages)
    errors: list[BaseException | None] = [None] * len(messages)
    futures: list[asyncio.Future[Any] | None] = []
    for i, m in enumerate(messages):
        future: asyncio.Future[Any] | None
        try:
            future = await js.publish_async(
                m.subject, m.payload, wait_stall=timeout, stream=m.stream, headers=dict(m.headers)
            )
        except Exception as error:  # stalled, or the connection is closed
            errors[i] = error
            future = None
        futures.append(future)
    pending = [f for f in futures if f is not None]
    if pending:
        _, late = await asyncio.wait(pending, timeout=timeout)
        for future in late:
            future.cancel()
    for i, future in enumerate(futures):
        if future is not None:
            errors[i] = ack_error(future, timeout)
            if errors[i] is None:
                acks[i] = future.result()
    return Published(acks, errors)


async def publish_one(js: Any, message: Outgoing, timeout: float) -> PubAck:
    """Publish one message and wait for its PubAck (raises on failure)."""
    ack: PubAck = await js.publish(
        message.subject, message.payload, timeout=timeout, stream=message.stream,
        headers=dict(message.headers),
    )
    return ack


async def publish_until_acked(
    send: Callable[[Sequence[Outgoing]], Awaitable[Published]],
    messages: Sequence[Outgoing],
    *,
    retry_delay: float,
    max_delay: float,
    give_up: asyncio.Event | None = None,
    on_error: Callable[[BaseException], None] | None = None,
) -> bool:
    """``send`` ``messages`` (``publish_all`` or a wrapper of it) and retry the ones that failed,
    with a delay doubling from ``retry_delay`` up to ``max_delay``, until every one is acked:
    True. False only when ``give_up`` is set first (the process is stopping). ``on_error`` sees
    each failure."""
    pending = list(messages)
    delay = retry_delay
    while pending:
        published = await send(pending)
        if on_error is not None:
            for error in published.errors:
                if error is not None:
                    on_error(error)
        pending = published.failed(pending)
        if not pending:
            return True
        if give_up is not None and give_up.is_set():
            return False
        try:
            if give_up is None:
                await asyncio.sleep(delay)
            else:
                await asyncio.wait_for(give_up.wait(), delay)
        except TimeoutError:
            pass
        delay = min(delay * 2, max_delay)
    return True
