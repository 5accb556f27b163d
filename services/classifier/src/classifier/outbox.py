"""Publishing to JetStream: ``Outgoing`` messages, sent in groups with their acks awaited together.

Transport only: what to publish is decided by the handler, the checkpointer and the alert code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol


@dataclass(frozen=True, slots=True)
class Outgoing:
    """One message to publish on JetStream."""

    subject: str
    payload: bytes | Callable[[], bytes]
    """The body, or a function that makes it when it is sent (a checkpoint: the stream's state
    at send time, so the last write sent is always the newest state)."""
    headers: dict[str, str]
    stream: str | None = None
    """Expected stream (``Nats-Expected-Stream``): a publish landing elsewhere fails."""
    coalesce: str | None = None
    """Messages with the same key published together are sent once (a source's checkpoint)."""


class Outbox(Protocol):
    """Where the handler publishes; raises or reports failures, never drops them."""

    async def publish_all(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        """Publish all, wait for all acks together; per message None or the failure."""
        ...

    async def publish(self, message: Outgoing) -> None:
        """Publish one message and wait for its ack (raises on failure)."""
        ...


class JetStreamOutbox:
    """``Outbox`` on nats-py's JetStream: ``publish_async`` with the acks awaited together."""

    def __init__(self, js: Any, timeout: float) -> None:
        self._js = js
        self._timeout = timeout

    async def publish_all(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        results: list[BaseException | None] = [None] * len(messages)
        futures: list[asyncio.Future[Any] | None] = []
        for i, m in enumerate(messages):
            future: asyncio.Future[Any] | None
            try:
                future = await self._js.publish_async(
                    m.subject,
                    m.payload() if callable(m.payload) else m.payload,
                    wait_stall=self._timeout,
                    stream=m.stream,
                    headers=dict(m.headers),
                )
            except Exception as error:  # stalled, or the connection is closed
                results[i] = error
                future = None
            futures.append(future)
        pending = [f for f in futures if f is not None]
        if pending:
            _, not_done = await asyncio.wait(pending, timeout=self._timeout)
            for late in not_done:
                late.cancel()
        for i, f in enumerate(futures):
            if f is None:
                continue
            if f.cancelled():
                results[i] = TimeoutError(f"no publish ack within {self._timeout} s")
            else:
                results[i] = f.exception()
        return results

    async def publish(self, message: Outgoing) -> None:
        payload = message.payload
        await self._js.publish(
            message.subject,
            payload() if callable(payload) else payload,
            timeout=self._timeout,
            stream=message.stream,
            headers=dict(message.headers),
        )


class CoalescingOutbox:
    """Gathers the ``publish_all`` calls of one event-loop turn into one group.

    Calls made in the same loop turn (the settle task of a fetch, a staleness check, a
    checkpoint flush) are sent together, and messages with the same ``coalesce`` key (the
    checkpoint of a source touched by several inputs) are sent once, with the body made at send
    time: the source's newest state covers every caller. Groups of different turns are in
    flight at the same time (the consume loop pipelines fetches); each is sent in one go, in
    turn order, so a later write of a checkpoint is always sent after an earlier one.
    """

    def __init__(self, inner: Outbox) -> None:
        self.inner = inner
        self._queued: list[tuple[Sequence[Outgoing], asyncio.Future[list[BaseException | None]]]]
        self._queued = []
        self._flushing: set[asyncio.Task[None]] = set()
        self._scheduled = False

    async def publish_all(self, messages: Sequence[Outgoing]) -> list[BaseException | None]:
        if not messages:
            return []
        future: asyncio.Future[list[BaseException | None]]
        future = asyncio.get_running_loop().create_future()
        self._queued.append((messages, future))
        if not self._scheduled:
            self._scheduled = True
            task = asyncio.create_task(self._flush(), name="classifier-publish-group")
            self._flushing.add(task)
            task.add_done_callback(self._flushing.discard)
        return await asyncio.shield(future)

    async def _flush(self) -> None:
        await asyncio.sleep(0)  # let the other calls of this loop turn join
        group, self._queued = self._queued, []
        self._scheduled = False
        unique: list[Outgoing] = []
        slots: list[list[int]] = []
        by_key: dict[str, int] = {}
        for messages, _ in group:
            positions = []
            for m in messages:
                if m.coalesce is not None and m.coalesce in by_key:
                    positions.append(by_key[m.coalesce])
                    continue
                if m.coalesce is not None:
                    by_key[m.coalesce] = len(unique)
                positions.append(len(unique))
                unique.append(m)
            slots.append(positions)
        try:
            results = await self.inner.publish_all(unique)
        except Exception as exc:  # never leave a caller waiting
            results = [exc] * len(unique)
        for (_, future), positions in zip(group, slots, strict=True):
            if not future.done():
                future.set_result([results[i] for i in positions])

    async def publish(self, message: Outgoing) -> None:
        await self.inner.publish(message)
