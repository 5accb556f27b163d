"""Per-source point batches of many requests/messages → one ``PointBundle`` per (domain,
partition) on ``dp.raw.<domain>.part.<p>``; each submitter is answered by the PubAck that covers
its points.

A submitter hands in the already normalised points of one source (``submit``) or batches it
encoded itself (``submit_encoded``, the CSV importer) and gets a future. The points are cut into
``PointBatch``es (``encode_batches``) and join the open bundle of their (domain,
``partition_of(domain, source, partitions)``). When a bundle is published:

- a partition publishes at most one bundle per linger: a bundle opened on a partition whose last
  bundle went out ``linger`` or longer ago goes at the end of the loop turn (what is submitted
  in that turn shares it), otherwise ``linger`` after that last bundle;
- a bundle that reaches ``FLUSH_POINTS`` points goes at the end of the loop turn whatever the
  linger (a batched producer never waits for it, and one turn's batches still share it);
- a bundle goes at once when the next batch would take it past ``MAX_BUNDLE_POINTS`` points or
  the byte bound (the server's ``max_payload`` minus room for headers).

So under light load a point waits for no linger at all, under any load no longer than the
linger, and the bus carries at most ``partitions / linger`` bundles per second of small
batches, whatever the request rate: their size grows with the load, and the cost of the bus,
the classifier and the writer per point falls with it.

One sender task publishes every bundle and rejection message with ``publish_async`` in the
order they were closed, on one connection, so the batches of one source reach the stream in
order across bundles. The submitter's future resolves with a ``PublishOutcome`` once every bundle
holding its points was acknowledged, or fails with ``PublishError`` as soon as one of them was
not (every submitter of that bundle gets the error). Rejection messages
(``dp.rejected.<transport>``) go through the same sender and are best effort.

``publish`` bounds its wait by ``timeout`` without a timer of its own: each bundle holding a
waiting ``publish`` has one deadline, ``timeout`` after it opened, at which those submitters fail
with ``PublishError("timeout")`` (the bundle itself is still published and its PubAck awaited).

A bundle's ``Nats-Msg-Id`` is ``bundle_msg_id`` of its batches' ``batch_msg_id``s, so a bundle
published again with the same batches is dropped by JetStream's duplicate window; the databases'
unique key drops any point that comes back in a bundle of another composition.
"""

from __future__ import annotations

import asyncio
import functools
import time
from collections import deque
from collections.abc import Callable, Sequence
from datetime import datetime
from typing import Any

import structlog
from nats.js import JetStreamContext

from tributary_contracts import (
    MAX_BUNDLE_POINTS,
    MSG_ID_HEADER,
    DataPoint,
    Namespace,
    Transport,
    bundle_msg_id,
    partition_of,
)
from tributary_ingest.batches import (
    HEADER_ROOM_BYTES,
    EncodedBatch,
    OutgoingMessage,
    PublishOutcome,
    encode_batches,
    encode_rejections,
)
from tributary_ingest.points import Rejection
from tributary_runtime.publish import PublishError, ack_error, error_type

FLUSH_POINTS = 100
"""A bundle this full goes at the end of the loop turn without waiting for the linger: at 100
points the per-message cost downstream is already a few µs per point."""

MAX_PARTITION_CLOCKS = 10_000
"""(domain, partition)s whose last bundle time is kept; beyond, those quiet for a linger (whose
next bundle may go at once anyway) are forgotten, so a producer inventing domains grows
nothing."""

BUNDLE_ROOM_BYTES = 128
"""Room in a bundle's payload for its envelope (domain, partition, brackets)."""

log = structlog.get_logger("tributary_ingest.coalesce")


class _Ticket:
    """One submitter's share: how many of its sends are not answered yet."""

    __slots__ = ("batches", "bounded", "duplicates", "future", "rejected_ok", "remaining")

    def __init__(
        self,
        future: asyncio.Future[PublishOutcome],
        remaining: int,
        batches: int,
        bounded: bool = False,
    ):
        self.future = future
        self.bounded = bounded  # fails at its bundles' deadline (``publish``)
        self.remaining = remaining
        self.batches = batches
        self.duplicates = 0
        self.rejected_ok = True


class _Send:
    """One publish: a closed bundle or a rejection message, and whose parts it carries."""

    __slots__ = ("deadline", "headers", "payload", "points", "rejection", "subject", "tickets")

    def __init__(
        self,
        subject: str,
        payload: bytes,
        headers: dict[str, str],
        tickets: list[_Ticket],
        points: int,
        rejection: bool,
    ) -> None:
        self.subject = subject
        self.payload = payload
        self.headers = headers
        self.tickets = tickets  # one entry per batch it holds (a ticket may repeat)
        self.points = points
        self.rejection = rejection
        self.deadline: asyncio.TimerHandle | None = None  # of its bounded tickets


class _Bundle:
    """The open bundle of one (domain, partition)."""

    __slots__ = ("deadline", "ids", "opened", "payloads", "points", "size", "tickets", "timer")

    def __init__(self, opened: float) -> None:
        self.opened = opened
        self.deadline: asyncio.TimerHandle | None = None
        self.payloads: list[bytes] = []
        self.ids: list[str] = []
        self.tickets: list[_Ticket] = []
        self.points = 0
        self.size = 0
        self.timer: asyncio.Handle | None = None  # publishes it (linger timer or call_soon)


class Coalescer:
    """Bundles the point batches of many submitters per (domain, partition) and publishes them
    through one ordered sender. Create it inside the running loop; ``close`` flushes."""

    def __init__(
        self,
        js: JetStreamContext,
        namespace: Namespace,
        *,
        transport: Transport,
        partitions: int,
        linger_seconds: float,
        timeout: float,
        max_message_bytes: int,
        excerpt_bytes: int,
        max_bundle_points: int = MAX_BUNDLE_POINTS,
        flush_points: int = FLUSH_POINTS,
        observe_ack_latency: Callable[[float], None] | None = None,
        observe_bundle_points: Callable[[float], None] | None = None,
    ) -> None:
        if partitions < 1:
            raise ValueError(f"partitions must be >= 1, got {partitions}")
        self._js = js
        self._ns = namespace
        self.transport = transport
        self.partitions = partitions
        self.linger = linger_seconds
        self.timeout = timeout
        self._max_points = max_bundle_points
        self._flush_points = flush_points
        self._max_bytes = max_message_bytes - HEADER_ROOM_BYTES - BUNDLE_ROOM_BYTES
        self._excerpt_bytes = excerpt_bytes
        self._rejected_subject = namespace.rejected_subject(transport.value)
        self._observe_ack_latency = observe_ack_latency
        self._observe_bundle_points = observe_bundle_points
        self._loop = asyncio.get_running_loop()
        self._open: dict[tuple[str, int], _Bundle] = {}
        self._last_closed: dict[tuple[str, int], float] = {}  # loop time of its last bundle
        self._partitions: dict[tuple[str, str], int] = {}
        self._ready: deque[_Send] = deque()
        self._wake = asyncio.Event()
        self._unanswered = 0  # sends published whose PubAck has not come yet
        self._idle = asyncio.Event()
        self._idle.set()
        self._closed = False
        self._sender = self._loop.create_task(self._send_loop(), name="coalescer-sender")

    @property
    def max_batch_bytes(self) -> int:
        """Largest payload of one ``PointBatch`` (so a bundle of it alone fits a message)."""
        return self._max_bytes

    def partition(self, domain: str, source_id: str) -> int:
        """``partition_of`` with this fleet's partition count (cached per source)."""
        key = (domain, source_id)
        partition = self._partitions.get(key)
        if partition is None:
            if len(self._partitions) >= 100_000:
                self._partitions.clear()
            partition = self._partitions[key] = partition_of(domain, source_id, self.partitions)
        return partition

    def rejection_messages(
        self,
        domain: str,
        source_id: str,
        received_at: datetime,
        rejections: Sequence[Rejection],
    ) -> list[OutgoingMessage]:
        """``rejections`` as ``dp.rejected.<transport>`` messages."""
        return encode_rejections(
            domain,
            source_id,
            received_at,
            rejections,
            self._rejected_subject,
            self._excerpt_bytes,
            transport=self.transport,
        )

    def submit(
        self,
        domain: str,
        source_id: str,
        received_at: datetime,
        points: Sequence[DataPoint],
        rejections: Sequence[Rejection] = (),
    ) -> asyncio.Future[PublishOutcome]:
        """Queue one source's points (and rejections) without waiting; the future resolves
        with the outcome once every bundle holding them was acknowledged."""
        batches = encode_batches(
            domain, source_id, received_at, points, self._max_bytes, transport=self.transport
        )
        rejected = (
            self.rejection_messages(domain, source_id, received_at, rejections)
            if rejections
            else []
        )
        return self.submit_encoded(domain, source_id, batches, rejected)

    def submit_encoded(
        self,
        domain: str,
        source_id: str,
        batches: Sequence[EncodedBatch],
        rejected: Sequence[OutgoingMessage] = (),
    ) -> asyncio.Future[PublishOutcome]:
        """``submit`` for batches of ``source_id`` encoded by the caller (each ≤
        ``max_batch_bytes``)."""
        return self._submit_encoded(domain, source_id, batches, rejected, False)

    def _submit_encoded(
        self,
        domain: str,
        source_id: str,
        batches: Sequence[EncodedBatch],
        rejected: Sequence[OutgoingMessage],
        bounded: bool,
    ) -> asyncio.Future[PublishOutcome]:
        future: asyncio.Future[PublishOutcome] = self._loop.create_future()
        if self._closed:
            future.set_exception(PublishError("closed", "the gateway is shutting down"))
            future.exception()
            return future
        ticket = _Ticket(future, len(batches) + len(rejected), len(batches), bounded)
        if ticket.remaining == 0:
            future.set_result(PublishOutcome(0, 0, True))
            return future
        if batches:
            key = (domain, self.partition(domain, source_id))
            for batch in batches:
                self._add(key, batch, ticket)
        for message in rejected:
            self._enqueue(
                _Send(message.subject, message.payload, message.headers, [ticket], 0, True)
            )
        return future

    async def publish(
        self,
        domain: str,
        source_id: str,
        received_at: datetime,
        points: Sequence[DataPoint],
        rejections: Sequence[Rejection] = (),
    ) -> PublishOutcome:
        """``submit``, then wait (≤ ``timeout``) for the outcome; ``PublishError`` unless every
        point was acknowledged. The wait goes to ``observe_ack_latency``."""
        started = time.perf_counter()
        try:
            if rejections:  # rejection messages have no bundle deadline: a timer of its own
                future = self.submit(domain, source_id, received_at, points, rejections)
                return await settle(future, self._loop.time() + self.timeout)
            batches = encode_batches(
                domain, source_id, received_at, points, self._max_bytes, transport=self.transport
            )
            return await self._submit_encoded(domain, source_id, batches, (), True)
        finally:
            if self._observe_ack_latency is not None:
                self._observe_ack_latency(time.perf_counter() - started)

    # -- bundling ---------------------------------------------------------------------------
    def _add(self, key: tuple[str, int], batch: EncodedBatch, ticket: _Ticket) -> None:
        bundle = self._open.get(key)
        size = len(batch.payload) + 1
        if bundle is not None and (
            bundle.points + batch.points > self._max_points or bundle.size + size > self._max_bytes
        ):
            self._close_bundle(key)
            bundle = None
        if bundle is None:
            now = self._loop.time()
            bundle = self._open[key] = _Bundle(now)
            due = self._last_closed.get(key, -self.linger) + self.linger
            if due <= now:  # a quiet partition: this loop turn's batches share the bundle
                bundle.timer = self._loop.call_soon(self._close_bundle, key)
            else:
                bundle.timer = self._loop.call_at(due, self._close_bundle, key)
        if ticket.bounded and bundle.deadline is None:
            bundle.deadline = self._loop.call_at(
                bundle.opened + self.timeout, self._expire, bundle.tickets
            )
        bundle.payloads.append(batch.payload)
        bundle.ids.append(batch.msg_id)
        bundle.tickets.append(ticket)
        before = bundle.points
        bundle.points += batch.points
        bundle.size += size
        if bundle.points >= self._max_points:
            self._close_bundle(key)
        elif before < self._flush_points <= bundle.points:
            assert bundle.timer is not None
            bundle.timer.cancel()
            bundle.timer = self._loop.call_soon(self._close_bundle, key)

    def _close_bundle(self, key: tuple[str, int]) -> None:
        """Publish the open bundle of ``key`` (its timer is cancelled: one bundle per timer)."""
        bundle = self._open.pop(key, None)
        if bundle is None:
            return
        now = self._last_closed[key] = self._loop.time()
        if len(self._last_closed) > MAX_PARTITION_CLOCKS:  # many domains: forget the quiet ones
            horizon = now - self.linger
            self._last_closed = {k: t for k, t in self._last_closed.items() if t > horizon}
        if bundle.timer is not None:
            bundle.timer.cancel()
        domain, partition = key
        payload = b"".join(
            (
                b'{"domain":"',
                domain.encode(),
                b'","partition":',
                str(partition).encode(),
                b',"batches":[',
                b",".join(bundle.payloads),
                b"]}",
            )
        )
        headers = {MSG_ID_HEADER: bundle_msg_id(bundle.ids)}
        subject = self._ns.raw_partition_subject(domain, partition)
        if self._observe_bundle_points is not None:
            self._observe_bundle_points(bundle.points)
        send = _Send(subject, payload, headers, bundle.tickets, bundle.points, False)
        send.deadline = bundle.deadline
        self._enqueue(send)

    @staticmethod
    def _expire(tickets: list[_Ticket]) -> None:
        """A bundle's deadline: its bounded submitters that still wait fail (the bundle is
        still published; its PubAck answers the others)."""
        for ticket in tickets:
            if ticket.bounded and not ticket.future.done():
                ticket.future.set_exception(
                    PublishError(
                        "timeout", "JetStream did not acknowledge within the publish timeout"
                    )
                )
                ticket.future.exception()  # retrieved: nobody may be waiting any more

    def flush(self) -> None:
        """Close every open bundle now (shutdown, tests)."""
        for key in list(self._open):
            self._close_bundle(key)

    # -- sending ----------------------------------------------------------------------------
    def _enqueue(self, send: _Send) -> None:
        self._ready.append(send)
        self._idle.clear()
        self._wake.set()

    async def _send_loop(self) -> None:
        ready, js, timeout = self._ready, self._js, self.timeout
        while True:
            if not ready:
                if self._unanswered == 0:
                    self._idle.set()
                self._wake.clear()
                await self._wake.wait()
                continue
            send = ready.popleft()
            try:
                ack = await js.publish_async(
                    send.subject, send.payload, wait_stall=timeout, headers=send.headers
                )
            except asyncio.CancelledError:
                self._answer(send, None, PublishError("closed", "the gateway is shutting down"))
                raise
            except Exception as exc:
                self._answer(send, None, exc)
                continue
            self._unanswered += 1
            timer = self._loop.call_later(timeout, ack.cancel)
            ack.add_done_callback(functools.partial(self._acked, send, timer))

    def _acked(self, send: _Send, timer: asyncio.TimerHandle, ack: asyncio.Future[Any]) -> None:
        timer.cancel()
        self._unanswered -= 1
        failure = ack_error(ack, self.timeout)
        self._answer(send, None if failure is not None else ack.result(), failure)
        if self._unanswered == 0 and not self._ready:
            self._idle.set()

    def _answer(self, send: _Send, ack: Any, failure: BaseException | None) -> None:
        if send.deadline is not None:
            send.deadline.cancel()
        error: PublishError | None = None
        if failure is not None and not send.rejection:
            error = (
                failure
                if isinstance(failure, PublishError)
                else PublishError(
                    error_type(failure), f"JetStream did not acknowledge: {failure!r}"
                )
            )
        duplicate = ack is not None and bool(getattr(ack, "duplicate", False))
        for ticket in send.tickets:
            ticket.remaining -= 1
            future = ticket.future
            if future.done():
                continue
            if send.rejection:
                ticket.rejected_ok = ticket.rejected_ok and failure is None
            elif error is not None:
                future.set_exception(error)
                future.exception()  # retrieved: a submitter that gave up must not log it
                continue
            elif duplicate:
                ticket.duplicates += 1
            if ticket.remaining == 0:
                future.set_result(
                    PublishOutcome(ticket.batches, ticket.duplicates, ticket.rejected_ok)
                )

    async def close(self, timeout: float | None = None) -> None:
        """Publish what is open, wait (≤ ``timeout``, default the publish timeout) for its
        PubAcks, then stop; later submissions fail with ``PublishError``."""
        self._closed = True
        self.flush()
        try:
            await asyncio.wait_for(self._idle.wait(), self.timeout if timeout is None else timeout)
        except TimeoutError:
            log.warning("coalescer_close_timeout", unanswered=self._unanswered + len(self._ready))
        self._sender.cancel()
        try:
            await self._sender
        except asyncio.CancelledError:
            pass
        while self._ready:
            send = self._ready.popleft()
            self._answer(send, None, PublishError("closed", "the gateway is shutting down"))


async def settle(future: asyncio.Future[PublishOutcome], deadline: float) -> PublishOutcome:
    """The outcome of a submission by ``deadline`` (loop time); ``PublishError`` if it failed
    or is not in by then (the submission is abandoned: its future is cancelled). One timer
    handle, not an ``asyncio.timeout`` context (this runs once per WebSocket data message)."""
    if future.done():
        return future.result()
    timer = asyncio.get_running_loop().call_at(deadline, future.cancel)
    try:
        return await future
    except asyncio.CancelledError:
        task = asyncio.current_task()
        if task is not None and task.cancelling():
            raise  # the waiter itself was cancelled
        raise PublishError(
            "timeout", "JetStream did not acknowledge within the publish timeout"
        ) from None
    finally:
        timer.cancel()
