"""Accepted points → ``PointBatch`` messages on ``dp.raw.<domain>.<source>``; rejected input →
``RejectedInput`` on ``dp.rejected.<transport>``; publishing them with ``publish_async``.

Batches hold at most ``MAX_BATCH_POINTS`` points and, so a batch of large metadata never exceeds
the server's ``max_payload``, are halved until their JSON fits. Each carries a deterministic
``Nats-Msg-Id`` (``batch_msg_id``: the points' keys only, never the receive time), so a client
that sends the same points again is dropped by JetStream's duplicate window. A rejection
message's id hashes its content without ``received_at`` for the same reason.
"""

from __future__ import annotations

import asyncio
import hashlib
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import nats.errors
import nats.js.errors
import orjson
from nats.js import JetStreamContext

from tributary_contracts import (
    MAX_BATCH_POINTS,
    MSG_ID_HEADER,
    DataPoint,
    Namespace,
    PointBatch,
    RejectedEntry,
    RejectedInput,
    Transport,
    batch_msg_id,
)
from tributary_ingest.points import Rejection

HEADER_ROOM_BYTES = 1024
"""Room left under the payload limit for the message's headers."""


@dataclass(frozen=True)
class OutgoingMessage:
    """One JetStream publish: subject, JSON payload, headers."""

    subject: str
    payload: bytes
    headers: dict[str, str]
    points: int  # data points inside (0 for a rejection message)


@dataclass(frozen=True)
class PublishOutcome:
    """What JetStream acknowledged for one request/message."""

    batches: int
    duplicates: int  # batches JetStream already had (same Nats-Msg-Id inside the window)
    rejected_published: bool  # False when the best-effort dp.rejected publish failed


class PublishError(Exception):
    """JetStream did not acknowledge every point batch (or a publish could not start)."""

    def __init__(self, error_type: str, detail: str) -> None:
        super().__init__(detail)
        self.error_type = error_type


def error_type(exc: BaseException) -> str:
    """Bounded label for a publish failure (a stalled ``publish_async``, which gave up waiting
    for room under ``wait_stall``, is a timeout too)."""
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


def encode_batches(
    domain: str,
    source_id: str,
    received_at: datetime,
    points: Sequence[DataPoint],
    subject: str,
    max_bytes: int,
    *,
    transport: Transport,
) -> list[OutgoingMessage]:
    """Cut ``points`` into ``PointBatch`` messages of ≤ 500 points and ≤ ``max_bytes`` each."""
    messages: list[OutgoingMessage] = []
    pending = [
        list(points[start : start + MAX_BATCH_POINTS])
        for start in range(0, len(points), MAX_BATCH_POINTS)
    ]
    pending.reverse()  # used as a stack; keeps input order across the output
    while pending:
        chunk = pending.pop()
        batch = PointBatch.model_construct(
            domain=domain,
            source_id=source_id,
            transport=transport,
            received_at=received_at,
            points=chunk,
        )
        payload = batch.model_dump_json().encode()
        if len(payload) > max_bytes and len(chunk) > 1:
            half = len(chunk) // 2
            pending.extend((chunk[half:], chunk[:half]))
            continue
        msg_id = batch_msg_id(domain, source_id, ((p.stream_id, p.ts) for p in chunk))
        messages.append(OutgoingMessage(subject, payload, {MSG_ID_HEADER: msg_id}, len(chunk)))
    return messages


def excerpt(raw: Any, limit: int) -> str:
    """At most ``limit`` bytes of the point as received, as JSON text when possible."""
    try:
        text = orjson.dumps(raw, default=repr).decode()
    except (orjson.JSONEncodeError, TypeError):
        text = repr(raw)
    return text.encode(errors="replace")[:limit].decode(errors="ignore")


def rejected_message(message: RejectedInput, subject: str) -> OutgoingMessage:
    """``message`` as a publish whose id hashes its content without ``received_at`` (so a
    retry or redelivery of the same bad input dedups)."""
    msg_id = hashlib.sha256(message.model_dump_json(exclude={"received_at"}).encode()).hexdigest()
    return OutgoingMessage(subject, message.model_dump_json().encode(), {MSG_ID_HEADER: msg_id}, 0)


def encode_rejections(
    domain: str,
    source_id: str,
    received_at: datetime,
    rejections: Sequence[Rejection],
    subject: str,
    excerpt_bytes: int,
    *,
    transport: Transport,
) -> list[OutgoingMessage]:
    """Rejected points as ``dp.rejected.<transport>`` messages of ≤ 500 entries each.

    Shape: ``{"transport", "domain", "source_id", "received_at", "rejected": [{"index",
    "stream_id", "reason", "excerpt"}]}``.
    """
    return [
        rejected_message(
            RejectedInput(
                transport=transport,
                domain=domain,
                source_id=source_id,
                received_at=received_at,
                rejected=[
                    RejectedEntry(
                        index=r.index,
                        stream_id=r.stream_id,
                        reason=r.reason,
                        excerpt=excerpt(r.raw, excerpt_bytes),
                    )
                    for r in rejections[start : start + MAX_BATCH_POINTS]
                ],
            ),
            subject,
        )
        for start in range(0, len(rejections), MAX_BATCH_POINTS)
    ]


@dataclass
class Submitted:
    """The PubAck futures of one request/message: point batches first, then rejection messages."""

    batch_futures: list[asyncio.Future[Any]]
    rejected_futures: list[asyncio.Future[Any]]


class BatchPublisher:
    """Publishes the batches and rejections of one request/message with ``publish_async``:
    ``submit`` does not wait (the caller ``settle``s later), ``publish`` also awaits the acks."""

    def __init__(
        self,
        js: JetStreamContext,
        namespace: Namespace,
        *,
        transport: Transport,
        timeout: float,
        max_message_bytes: int,
        excerpt_bytes: int,
        observe_ack_latency: Callable[[float], None] | None = None,
    ) -> None:
        self._js = js
        self._ns = namespace
        self.transport = transport
        self.timeout = timeout
        self._max_bytes = max_message_bytes - HEADER_ROOM_BYTES
        self._excerpt_bytes = excerpt_bytes
        self._rejected_subject = namespace.rejected_subject(transport.value)
        self._observe_ack_latency = observe_ack_latency

    def error_type(self, exc: BaseException) -> str:
        """``error_type`` with this publisher's labelling."""
        return error_type(exc)

    async def submit(
        self,
        domain: str,
        source_id: str,
        received_at: datetime,
        points: Sequence[DataPoint],
        rejections: Sequence[Rejection] = (),
    ) -> Submitted:
        """Publish everything without waiting for acks; ``PublishError`` if a publish cannot
        start (the futures already started are cancelled)."""
        batches = encode_batches(
            domain,
            source_id,
            received_at,
            points,
            self._ns.raw_subject(domain, source_id),
            self._max_bytes,
            transport=self.transport,
        )
        rejected = self.rejection_messages(domain, source_id, received_at, rejections)
        return await self.submit_messages(batches, rejected)

    @property
    def max_message_bytes(self) -> int:
        """Largest payload of one message (the server's limit minus room for headers)."""
        return self._max_bytes

    def raw_subject(self, domain: str, source_id: str) -> str:
        return self._ns.raw_subject(domain, source_id)

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

    async def submit_messages(
        self, batches: Sequence[OutgoingMessage], rejected: Sequence[OutgoingMessage] = ()
    ) -> Submitted:
        """``submit`` for messages encoded by the caller (e.g. the CSV importer, which writes
        its batches' JSON directly); same ``PublishError`` on a publish that cannot start."""
        submitted = Submitted([], [])
        try:
            for message in batches:
                submitted.batch_futures.append(await self._publish(message))
            for message in rejected:
                submitted.rejected_futures.append(await self._publish(message))
        except Exception as exc:
            for future in (*submitted.batch_futures, *submitted.rejected_futures):
                future.cancel()
            raise PublishError(self.error_type(exc), f"publish failed: {exc!r}") from exc
        return submitted

    async def _publish(self, message: OutgoingMessage) -> asyncio.Future[Any]:
        return await self._js.publish_async(
            message.subject, message.payload, wait_stall=self.timeout, headers=message.headers
        )

    async def publish(
        self,
        domain: str,
        source_id: str,
        received_at: datetime,
        points: Sequence[DataPoint],
        rejections: Sequence[Rejection] = (),
    ) -> PublishOutcome:
        """``submit``, then await every PubAck within ``timeout``; ``PublishError`` unless every
        point batch was acked. The time from the first publish until the acks are in (or the
        timeout) goes to ``observe_ack_latency``."""
        started = time.perf_counter()
        submitted = await self.submit(domain, source_id, received_at, points, rejections)
        deadline = asyncio.get_running_loop().time() + self.timeout
        try:
            rejected_ok = await settle(submitted, deadline)
        finally:
            if self._observe_ack_latency is not None:
                self._observe_ack_latency(time.perf_counter() - started)
        duplicates = sum(1 for future in submitted.batch_futures if future.result().duplicate)
        return PublishOutcome(len(submitted.batch_futures), duplicates, rejected_ok)


async def settle(submitted: Submitted, deadline: float) -> bool:
    """Wait until ``deadline`` (loop time) for every PubAck of ``submitted``.

    Returns whether the rejection messages were acknowledged too (they are best effort); raises
    ``PublishError`` unless every point batch was.
    """
    futures = [*submitted.batch_futures, *submitted.rejected_futures]
    if futures:
        remaining = deadline - asyncio.get_running_loop().time()
        _, pending = await asyncio.wait(futures, timeout=max(remaining, 0.0))
        for future in pending:
            future.cancel()
    first_error: BaseException | None = None
    for future in submitted.batch_futures:
        failure = _failure(future)
        if failure is not None and first_error is None:
            first_error = failure
    rejected_ok = all(_failure(f) is None for f in submitted.rejected_futures)
    if first_error is not None:
        raise PublishError(
            error_type(first_error),
            f"JetStream did not acknowledge: {first_error!r}",
        )
    return rejected_ok


def _failure(future: asyncio.Future[Any]) -> BaseException | None:
    """Why ``future`` did not yield a PubAck (always retrieves the exception), or None."""
    if future.cancelled():
        return TimeoutError("no PubAck within the publish timeout")
    return future.exception()
