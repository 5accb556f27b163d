"""Where the classifier publishes: ``tributary_runtime.publish`` on its connection, with the
``publish_all`` calls of one event-loop turn gathered into one group.

Transport only: what to publish is decided by the handler, the checkpointer and the alert code.
"""

from __future__ import annotations

import asyncio
from collections.abc import Sequence
from typing import Any, Protocol

from tributary_runtime.publish import Outgoing, Published, publish_all, publish_one


class Outbox(Protocol):
    """Where the handler publishes; raises or reports failures, never drops them."""

    async def publish_all(self, messages: Sequence[Outgoing]) -> Published:
        """Publish all, wait for all acks together."""
        ...

    async def publish(self, message: Outgoing) -> None:
        """Publish one message and wait for its ack (raises on failure)."""
        ...


class JetStreamOutbox:
    """``Outbox`` on nats-py's JetStream (``publish_all``, ``publish_one``)."""

    def __init__(self, js: Any, timeout: float) -> None:
        self._js = js
        self._timeout = timeout

    async def publish_all(self, messages: Sequence[Outgoing]) -> Published:
        return await publish_all(self._js, messages, self._timeout)

    async def publish(self, message: Outgoing) -> None:
        await publish_one(self._js, message, self._timeout)


class CoalescingOutbox:
    """Gathers the ``publish_all`` calls of one event-loop turn into one group.

    Calls made in the same loop turn (the publish tasks of several partitions' fetches, a
    snapshot's documents) are sent together. Groups of different turns are in flight at the
    same time (the consume loops pipeline fetches); each is sent in one go, in turn order.
    """

    def __init__(self, inner: Outbox) -> None:
        self.inner = inner
        self._queued: list[tuple[Sequence[Outgoing], asyncio.Future[Published]]] = []
        self._flushing: set[asyncio.Task[None]] = set()
        self._scheduled = False

    async def publish_all(self, messages: Sequence[Outgoing]) -> Published:
        if not messages:
            return Published([], [])
        future: asyncio.Future[Published] = asyncio.get_running_loop().create_future()
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
        flat = [m for messages, _ in group for m in messages]
        try:
            published = await self.inner.publish_all(flat)
        except Exception as exc:  # never leave a caller waiting
            published = Published.failure(exc, len(flat))
        position = 0
        for messages, future in group:
            if not future.done():
                future.set_result(published.part(position, position + len(messages)))
            position += len(messages)

    async def publish(self, message: Outgoing) -> None:
        await self.inner.publish(message)
