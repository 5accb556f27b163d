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
    payload: bytes
    headers: dict[str, str]
    stream: str | None = None
    """Expected stream (``Nats-Expected-Stream``): a publish landing elsewhere fails."""


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
                    m.payload,
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
        await self._js.publish(
            message.subject,
            message.payload,
            timeout=self._timeout,
            stream=message.stream,
            headers=dict(message.headers),
        )


class CoalescingOutbox:
    """Gathers the ``publish_all`` calls of one event-loop turn into one group.

    Calls made in the same loop turn (the publish tasks of several partitions' fetches, a
    snapshot's documents) are sent together. Groups of different turns are in flight at the
    same time (the consume loops pipeline fetches); each is sent in one go, in turn order.
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
        flat = [m for messages, _ in group for m in messages]
        try:
            results = await self.inner.publish_all(flat)
        except Exception as exc:  # never leave a caller waiting
            results = [exc] * len(flat)
        position = 0
        for messages, future in group:
            if not future.done():
                future.set_result(results[position : position + len(messages)])
            position += len(messages)

    async def publish(self, message: Outgoing) -> None:
        await self.inner.publish(message)


async def publish_until_acked(
    outbox: Outbox,
    messages: Sequence[Outgoing],
    *,
    retry_delay: float,
    max_delay: float,
    give_up: asyncio.Event | None = None,
    on_error: Callable[[BaseException], None] | None = None,
) -> bool:
    """Publish ``messages`` and retry the ones that failed (same bytes, same ``Nats-Msg-Id``:
    a retry of a publish that did land is deduplicated) with a delay doubling from
    ``retry_delay`` up to ``max_delay``, until every one is acked: True. False only when
    ``give_up`` is set first (the process is stopping). ``on_error`` sees each failure."""
    pending = list(messages)
    delay = retry_delay
    while pending:
        results = await outbox.publish_all(pending)
        failed = [m for m, error in zip(pending, results, strict=True) if error is not None]
        if on_error is not None:
            for error in results:
                if error is not None:
                    on_error(error)
        pending = failed
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
