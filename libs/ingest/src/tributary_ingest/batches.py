"""Accepted points → encoded ``PointBatch``es (``coalesce`` bundles and publishes them); rejected
input → ``RejectedInput`` messages on ``dp.rejected.<transport>``. (Publish errors and their
labels: ``tributary_runtime.publish``.)

Batches hold at most ``MAX_BATCH_POINTS`` points and, so a batch of large metadata never exceeds
the server's ``max_payload``, are halved until their JSON fits. Each carries a deterministic
``Nats-Msg-Id`` (``batch_msg_id``: the points' keys only, never the receive time), so a client
that sends the same points again is dropped by JetStream's duplicate window. A rejection
message's id hashes its content without ``received_at`` for the same reason.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import orjson
from pydantic import TypeAdapter

from tributary_contracts import (
    MAX_BATCH_POINTS,
    MSG_ID_HEADER,
    DataPoint,
    RejectedEntry,
    RejectedInput,
    Transport,
    batch_msg_id_of,
)
from tributary_ingest.points import Rejection

_POINTS = TypeAdapter(list[DataPoint])

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
class EncodedBatch:
    """One ``PointBatch`` as JSON, with its ``batch_msg_id``."""

    payload: bytes
    msg_id: str
    points: int


@dataclass(frozen=True)
class PublishOutcome:
    """What JetStream acknowledged for one request/message."""

    batches: int
    duplicates: int  # batches whose bundle JetStream already had (same Nats-Msg-Id)
    rejected_published: bool  # False when the best-effort dp.rejected publish failed


def encode_batches(
    domain: str,
    source_id: str,
    received_at: datetime,
    points: Sequence[DataPoint],
    max_bytes: int,
    *,
    transport: Transport,
) -> list[EncodedBatch]:
    """Cut ``points`` into ``PointBatch``es of ≤ 500 points and ≤ ``max_bytes`` each.

    The envelope is written with orjson and only the points go through pydantic's serializer
    (building a ``PointBatch`` per request cost as much as the rest of the encoding); the JSON
    is a valid ``PointBatch`` (tested)."""
    head = b'{"domain":%b,"source_id":%b,"transport":"%b","received_at":%b,"points":' % (
        orjson.dumps(domain),
        orjson.dumps(source_id),
        transport.value.encode(),
        orjson.dumps(received_at),
    )
    messages: list[EncodedBatch] = []
    if not points:
        return messages
    if len(points) <= MAX_BATCH_POINTS:  # the usual case: no slicing
        pending = [points if isinstance(points, list) else list(points)]
    else:
        pending = [
            list(points[start : start + MAX_BATCH_POINTS])
            for start in range(0, len(points), MAX_BATCH_POINTS)
        ]
    pending.reverse()  # used as a stack; keeps input order across the output
    while pending:
        chunk = pending.pop()
        payload = head + _POINTS.dump_json(chunk) + b"}"
        if len(payload) > max_bytes and len(chunk) > 1:
            half = len(chunk) // 2
            pending.extend((chunk[half:], chunk[:half]))
            continue
        msg_id = batch_msg_id_of(
            domain, source_id, [p.stream_id for p in chunk], [p.ts.timestamp() for p in chunk]
        )
        messages.append(EncodedBatch(payload, msg_id, len(chunk)))
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
