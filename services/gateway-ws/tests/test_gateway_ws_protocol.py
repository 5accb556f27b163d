"""Unit tests of the protocol's parsing and replies (no sockets, no NATS)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson
import pytest

from gateway_ws.protocol import (
    Connect,
    Data,
    ErrorCode,
    Ping,
    ProtocolError,
    ack_reply,
    connected_reply,
    normalize_batch,
    parse_message,
)
from tributary_contracts import DataPoint

NOW = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)
CONNECT = {"type": "connect", "source_id": "server-01", "domain": "infrastructure", "api_key": "k"}


def parse(message: Any, limit: int = 1 << 20) -> Any:
    return parse_message(orjson.dumps(message).decode(), limit)


def test_the_seed_handshake_parses_as_connect_without_resume() -> None:
    assert parse(CONNECT) == Connect("server-01", "infrastructure", "k", False)


def test_connect_with_resume_and_an_integer_source_id() -> None:
    assert parse({**CONNECT, "source_id": 42, "resume": True}) == Connect(
        "42", "infrastructure", "k", True
    )


@pytest.mark.parametrize(
    ("change", "code", "part"),
    [
        ({"source_id": ""}, ErrorCode.BAD_CONNECT, "source_id must not be empty"),
        ({"source_id": None}, ErrorCode.BAD_CONNECT, "source_id must be a string"),
        ({"domain": "Infra"}, ErrorCode.BAD_CONNECT, "domain must match"),
        ({"domain": 3}, ErrorCode.BAD_CONNECT, "domain must be a string, got a number"),
        ({"domain": "iot"}, ErrorCode.BAD_CONNECT, "'iot' is not accepted"),
        ({"api_key": None}, ErrorCode.UNAUTHORIZED, "connect needs api_key"),
        ({"api_key": 5}, ErrorCode.UNAUTHORIZED, "api_key must be a string"),
        ({"resume": "yes"}, ErrorCode.BAD_CONNECT, "resume must be true or false"),
        ({"token": "x"}, ErrorCode.BAD_CONNECT, "unknown field(s) token"),
    ],
)
def test_invalid_connects_name_the_field(
    change: dict[str, Any], code: ErrorCode, part: str
) -> None:
    message = {**CONNECT, **change}
    if change.get("api_key", "") is None:
        del message["api_key"]

    error = parse(message)

    assert isinstance(error, ProtocolError) and error.code is code, error
    assert part in error.reason


def test_missing_source_id_is_named() -> None:
    message = dict(CONNECT)
    del message["source_id"]

    assert parse(message) == ProtocolError(ErrorCode.BAD_CONNECT, "source_id is required")


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{", ErrorCode.BAD_JSON),
        ("", ErrorCode.BAD_JSON),
        ("7", ErrorCode.BAD_MESSAGE),
        ('{"type": 1}', ErrorCode.BAD_MESSAGE),
        ('{"type": "hello"}', ErrorCode.UNKNOWN_TYPE),
        ('{"type": "ping", "x": 1}', ErrorCode.BAD_MESSAGE),
        ('{"type": "data"}', ErrorCode.BAD_BATCH),
        ('{"type": "data", "batch": []}', ErrorCode.BAD_BATCH),
    ],
)
def test_frame_mistakes_have_their_error_code(frame: str, code: ErrorCode) -> None:
    result = parse_message(frame, 1 << 20)

    assert isinstance(result, ProtocolError) and result.code is code
    assert not result.fatal


def test_a_frame_over_the_limit_is_refused_before_parsing() -> None:
    frame = '{"type": "data", "batch": [' + "1," * 600 + "1]}"

    result = parse_message(frame, 1024)

    assert isinstance(result, ProtocolError) and result.code is ErrorCode.FRAME_TOO_LARGE
    assert f"message of {len(frame)} bytes is larger than 1024 bytes" in result.reason


def test_the_frame_limit_counts_utf8_bytes_not_characters() -> None:
    frame = orjson.dumps({"type": "ping", "id": "é" * 600}).decode()  # 600 chars, 1200 bytes

    result = parse_message(frame, 1024)

    assert isinstance(result, ProtocolError) and result.code is ErrorCode.FRAME_TOO_LARGE


def test_binary_frames_carry_json_too() -> None:
    assert parse_message(b'{"type": "ping", "id": 3}', 1024) == Ping(3)
    assert parse_message(b'{"type": "data", "batch": [1]}', 1024) == Data([1])


def test_auth_errors_and_bus_errors_are_fatal_others_not() -> None:
    fatal = {c for c in ErrorCode if ProtocolError(c, "").fatal}

    assert fatal == {
        ErrorCode.UNAUTHORIZED,
        ErrorCode.FORBIDDEN,
        ErrorCode.TOO_MANY_SESSIONS,
        ErrorCode.BUS_UNAVAILABLE,
    }


def test_normalize_batch_splits_points_and_takes_the_highest_sequence() -> None:
    batch = [
        {"stream_id": "a", "value": 1, "sequence": 3, "timestamp": 1772053200},
        {"stream_id": "b", "value": float("nan"), "sequence": 9},
        {"stream_id": "c", "value": 2.5},
        {"stream_id": "d", "value": 4, "sequence": 5, "metadata": {"k": "v"}},
    ]

    result = normalize_batch(batch, NOW)

    assert [p.stream_id for p in result.accepted] == ["a", "c", "d"]
    assert [(r.index, r.stream_id, r.code) for r in result.rejected] == [(1, "b", "value")]
    assert result.sequence_up_to == 9  # a rejected point is answered for good, too
    assert result.accepted[1].ts == NOW  # no timestamp → receive time
    for point in result.accepted:  # built without validation, must still be valid
        assert DataPoint.model_validate(point.model_dump()) == point


def test_a_batch_without_sequences_acks_with_null() -> None:
    result = normalize_batch([{"stream_id": "a", "value": 1}], NOW)

    assert ack_reply(result) == {
        "type": "ack",
        "sequence_up_to": None,
        "accepted": 1,
        "rejected": [],
    }


def test_connected_names_the_last_sequence_only_when_resuming() -> None:
    assert connected_reply("s1", False, None) == {"type": "connected", "session_id": "s1"}
    assert connected_reply("s1", True, None) == {
        "type": "connected",
        "session_id": "s1",
        "last_sequence": None,
    }
    assert connected_reply("s1", True, 7)["last_sequence"] == 7
