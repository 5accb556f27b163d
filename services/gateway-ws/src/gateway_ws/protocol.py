"""The ``/ingest/stream`` protocol as plain data: client frames → typed messages or protocol
errors, and the server's replies. No sockets and no NATS here (the unit tests live on this).

Client → server: ``connect``, ``data``, ``ping``. Server → client: ``connected``, ``ack``,
``error``, ``pong``. Every client message after the socket opens gets exactly one reply, in the
order the messages were sent (an ``ack`` waits for the JetStream PubAcks of its points, and a later
``error`` or ``pong`` waits behind it).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from enum import IntEnum, StrEnum
from typing import Any

import orjson

from tributary_contracts import DataPoint
from tributary_ingest.points import (
    IOT_DOMAIN,
    MalformedJson,
    Rejection,
    check_domain,
    check_identifier,
    duplicate_problem,
    id_text,
    json_type,
    missing,
    normalize_point,
    parse_json,
    safe_text,
)

CONNECT_FIELDS = frozenset({"type", "source_id", "domain", "api_key", "resume"})
DATA_FIELDS = frozenset({"type", "batch"})
PING_FIELDS = frozenset({"type", "id"})
MESSAGE_TYPES = ("connect", "data", "ping")


class ErrorCode(StrEnum):
    """``code`` of an ``error`` reply (bounded: also the metrics label)."""

    BAD_JSON = "bad_json"
    """The frame is not JSON."""
    BAD_MESSAGE = "bad_message"
    """JSON, but not an object with a string ``type``."""
    UNKNOWN_TYPE = "unknown_type"
    """``type`` is none of connect, data, ping."""
    FRAME_TOO_LARGE = "frame_too_large"
    """The frame is larger than ``MAX_FRAME_BYTES``; it was discarded unread."""
    NOT_CONNECTED = "not_connected"
    """``data`` before a successful ``connect``."""
    ALREADY_CONNECTED = "already_connected"
    """A second ``connect`` on a connected session."""
    BAD_CONNECT = "bad_connect"
    """``connect`` with a missing/invalid field; send a corrected one."""
    BAD_BATCH = "bad_batch"
    """``data`` whose ``batch`` is not a non-empty array of at most the allowed points."""
    UNAUTHORIZED = "unauthorized"
    """Missing or unknown ``api_key`` (fatal: closed with 1008)."""
    FORBIDDEN = "forbidden"
    """The key's role may not ingest (fatal: closed with 1008)."""
    TOO_MANY_SESSIONS = "too_many_sessions"
    """The key holds ``MAX_SESSIONS_PER_KEY`` sessions already (fatal: closed with 1013)."""
    BUS_UNAVAILABLE = "bus_unavailable"
    """JetStream did not acknowledge (fatal: closed with 1013; reconnect and resume)."""
    RATE_LIMITED = "rate_limited"
    """Over the client IP's frame rate or the source's point rate: this message was NOT
    accepted (no ack); resend it after ``retry_after`` seconds. Fatal only on connect."""


FATAL_CODES = frozenset(
    {
        ErrorCode.UNAUTHORIZED,
        ErrorCode.FORBIDDEN,
        ErrorCode.TOO_MANY_SESSIONS,
        ErrorCode.BUS_UNAVAILABLE,
    }
)


class CloseCode(IntEnum):
    """WebSocket close codes the gateway uses (RFC 6455 §7.4 and the IANA registry)."""

    NORMAL = 1000
    """Idle timeout: nothing received and no reply owed for ``IDLE_TIMEOUT_SECONDS``."""
    GOING_AWAY = 1001
    """The gateway shuts down; everything durable was acked first. Reconnect and resume."""
    POLICY_VIOLATION = 1008
    """Unauthorized or forbidden key, or no ``connect`` within ``CONNECT_TIMEOUT_SECONDS``."""
    MESSAGE_TOO_BIG = 1009
    """A frame beyond 4 × ``MAX_FRAME_BYTES`` (closed by the WebSocket layer)."""
    INTERNAL_ERROR = 1011
    """A bug (logged) or an unanswered keepalive ping."""
    TRY_AGAIN_LATER = 1013
    """Bus unavailable or too many sessions for the key. Reconnect (and resume) later."""
    REPLACED = 4000
    """A newer session connected for the same (domain, source_id)."""


@dataclass(frozen=True)
class ProtocolError:
    """A client mistake: the ``error`` reply to send."""

    code: ErrorCode
    reason: str
    retry_after: int | None = None  # rate_limited, bus_unavailable: seconds before retrying
    fatal_override: bool = False  # fatal although its code is not (rate_limited on connect)

    @property
    def fatal(self) -> bool:
        return self.fatal_override or self.code in FATAL_CODES


@dataclass(frozen=True)
class Connect:
    source_id: str
    domain: str
    api_key: str
    resume: bool


@dataclass(frozen=True)
class Data:
    batch: list[Any]


@dataclass(frozen=True)
class Ping:
    id: Any = None


ClientMessage = Connect | Data | Ping


def frame_size(frame: str | bytes) -> int:
    """Size of a frame in bytes (text is UTF-8 on the wire; ``len`` bounds it from below)."""
    if isinstance(frame, bytes):
        return len(frame)
    return len(frame) if frame.isascii() else len(frame.encode())


def parse_message(frame: str | bytes, max_frame_bytes: int) -> ClientMessage | ProtocolError:
    """A frame (text, or UTF-8 JSON in a binary frame) as a client message or a protocol error."""
    size = frame_size(frame)
    if size > max_frame_bytes:
        return ProtocolError(
            ErrorCode.FRAME_TOO_LARGE,
            f"message of {size} bytes is larger than {max_frame_bytes} bytes; it was discarded "
            "(split the batch)",
        )
    try:
        body = parse_json(frame, what="message")
    except MalformedJson as exc:
        return ProtocolError(ErrorCode.BAD_JSON, str(exc))
    if not isinstance(body, dict):
        return ProtocolError(
            ErrorCode.BAD_MESSAGE, f"message must be a JSON object, got {json_type(body)}"
        )
    if problem := duplicate_problem(body, "the message"):
        return ProtocolError(ErrorCode.BAD_MESSAGE, problem)
    kind = body.get("type")
    if not isinstance(kind, str):
        return ProtocolError(
            ErrorCode.BAD_MESSAGE,
            f"message needs a string field type (one of {', '.join(MESSAGE_TYPES)})",
        )
    if kind == "data":
        return _parse_data(body)
    if kind == "connect":
        return _parse_connect(body)
    if kind == "ping":
        unknown = sorted(safe_text(str(k))[:64] for k in body if k not in PING_FIELDS)
        if unknown:
            return ProtocolError(
                ErrorCode.BAD_MESSAGE, f"unknown field(s) {', '.join(unknown)} in ping"
            )
        return Ping(body.get("id"))
    return ProtocolError(
        ErrorCode.UNKNOWN_TYPE,
        f"unknown message type {kind[:64]!r}; expected one of {', '.join(MESSAGE_TYPES)}",
    )


def _parse_connect(body: dict[str, Any]) -> Connect | ProtocolError:
    unknown = sorted(safe_text(str(k))[:64] for k in body if k not in CONNECT_FIELDS)
    if unknown:
        return ProtocolError(
            ErrorCode.BAD_CONNECT,
            f"unknown field(s) {', '.join(unknown)} in connect; expected source_id, domain, "
            "api_key, resume",
        )
    for name in ("source_id", "domain"):
        if name not in body:
            return ProtocolError(ErrorCode.BAD_CONNECT, missing(name))
    source_id = id_text(body["source_id"])
    problem = check_identifier(source_id, "source_id")
    if problem:
        return ProtocolError(ErrorCode.BAD_CONNECT, problem)
    domain = body["domain"]
    if problem := check_domain(domain):
        return ProtocolError(ErrorCode.BAD_CONNECT, problem)
    if domain == IOT_DOMAIN:
        return ProtocolError(
            ErrorCode.BAD_CONNECT,
            "domain 'iot' is not accepted on /ingest/stream: use the IoT endpoints of "
            "gateway-http or the legacy MQTT topics",
        )
    api_key = body.get("api_key")
    if api_key is None or api_key == "":
        return ProtocolError(ErrorCode.UNAUTHORIZED, "connect needs api_key")
    if not isinstance(api_key, str):
        return ProtocolError(ErrorCode.UNAUTHORIZED, "api_key must be a string")
    resume = body.get("resume", False)
    if not isinstance(resume, bool):
        return ProtocolError(
            ErrorCode.BAD_CONNECT, f"resume must be true or false, got {json_type(resume)}"
        )
    return Connect(source_id, domain, api_key, resume)


def _parse_data(body: dict[str, Any]) -> Data | ProtocolError:
    unknown = sorted(safe_text(str(k))[:64] for k in body if k not in DATA_FIELDS)
    if unknown:
        return ProtocolError(
            ErrorCode.BAD_BATCH, f"unknown field(s) {', '.join(unknown)} in data; expected batch"
        )
    batch = body.get("batch")
    if not isinstance(batch, list):
        return ProtocolError(
            ErrorCode.BAD_BATCH, f"data needs batch, an array of points, got {json_type(batch)}"
        )
    if not batch:
        return ProtocolError(ErrorCode.BAD_BATCH, "batch must contain at least one point")
    return Data(batch)


@dataclass
class NormalizedBatch:
    """What one ``data`` message becomes."""

    accepted: list[DataPoint] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)
    sequence_up_to: int | None = None  # highest integer ``sequence`` among the batch's points


def normalize_batch(batch: list[Any], received_at: datetime) -> NormalizedBatch:
    """Points of a ``data`` message → accepted points, rejections, and the ack's sequence."""
    result = NormalizedBatch()
    highest: int | None = None
    for index, raw in enumerate(batch):
        point = normalize_point(raw, index, received_at)
        if isinstance(point, Rejection):
            result.rejected.append(point)
            sequence = raw.get("sequence") if isinstance(raw, dict) else None
            if not (isinstance(sequence, int) and not isinstance(sequence, bool)):
                continue
        else:
            result.accepted.append(point)
            sequence = point.sequence
            if sequence is None:
                continue
        if highest is None or sequence > highest:
            highest = sequence
    result.sequence_up_to = highest
    return result


# -- server → client ----------------------------------------------------------------------


def encode(message: dict[str, Any]) -> str:
    return orjson.dumps(message).decode()


def connected_reply(session_id: str, resume: bool, last_sequence: int | None) -> dict[str, Any]:
    reply: dict[str, Any] = {"type": "connected", "session_id": session_id}
    if resume:
        reply["last_sequence"] = last_sequence
    return reply


def ack_reply(normalized: NormalizedBatch) -> dict[str, Any]:
    return {
        "type": "ack",
        "sequence_up_to": normalized.sequence_up_to,
        "accepted": len(normalized.accepted),
        "rejected": [r.to_reply() for r in normalized.rejected],
    }


def error_reply(error: ProtocolError) -> dict[str, Any]:
    reply: dict[str, Any] = {"type": "error", "code": error.code.value, "reason": error.reason}
    if error.retry_after is not None:
        reply["retry_after"] = error.retry_after
    return reply


def pong_reply(ping: Ping) -> dict[str, Any]:
    reply: dict[str, Any] = {"type": "pong"}
    if ping.id is not None:
        reply["id"] = ping.id
    return reply
