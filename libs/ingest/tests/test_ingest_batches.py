"""Unit tests of how batches and rejections are cut and encoded (no NATS: pure encoding)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import nats.errors
import nats.js.errors
import orjson
import pytest

from tributary_contracts import MSG_ID_HEADER, DataPoint, PointBatch, Transport, batch_msg_id
from tributary_ingest.batches import encode_batches, encode_rejections, excerpt
from tributary_ingest.points import Rejection, normalize_point
from tributary_runtime.publish import error_type

RECEIVED = datetime(2026, 3, 1, tzinfo=UTC)
WS = Transport.WS


def points(n: int, metadata_bytes: int = 0) -> list[DataPoint]:
    out = []
    for i in range(n):
        raw = {
            "stream_id": f"s{i}",
            "value": float(i),
            "timestamp": (RECEIVED + timedelta(seconds=i)).isoformat(),
            "metadata": {"pad": "x" * metadata_bytes} if metadata_bytes else None,
        }
        point = normalize_point(raw, i, RECEIVED)
        assert isinstance(point, DataPoint)
        out.append(point)
    return out


@pytest.mark.parametrize("transport", list(Transport))
@pytest.mark.parametrize(
    ("count", "sizes"),
    [(1, [1]), (500, [500]), (501, [500, 1]), (1200, [500, 500, 200])],
)
def test_encode_batches_cuts_at_500_points(
    count: int, sizes: list[int], transport: Transport
) -> None:
    messages = encode_batches(
        "finance", "x.y", RECEIVED, points(count), 10**7, transport=transport
    )

    batches = [PointBatch.model_validate_json(m.payload) for m in messages]
    assert [len(b.points) for b in batches] == sizes
    assert [m.points for m in messages] == sizes
    assert [p.stream_id for b in batches for p in b.points] == [f"s{i}" for i in range(count)]
    for message, batch in zip(messages, batches, strict=True):
        assert message.msg_id == batch_msg_id(
            "finance", "x.y", [(p.stream_id, p.ts) for p in batch.points]
        )
        assert (batch.domain, batch.source_id, batch.transport, batch.received_at) == (
            "finance",
            "x.y",
            transport.value,
            RECEIVED,
        )


def test_encode_batches_halves_batches_until_they_fit_the_byte_limit() -> None:
    limit = 100_000
    messages = encode_batches(
        "finance", "s", RECEIVED, points(300, 2000), limit, transport=Transport.HTTP
    )

    assert all(len(m.payload) <= limit for m in messages)
    assert sum(m.points for m in messages) == 300
    stream_ids = [
        p.stream_id for m in messages for p in PointBatch.model_validate_json(m.payload).points
    ]
    assert stream_ids == [f"s{i}" for i in range(300)]


def test_encode_batches_is_deterministic_so_retries_dedup() -> None:
    first = encode_batches("finance", "s", RECEIVED, points(700), 10**7, transport=WS)
    again = encode_batches(
        "finance", "s", RECEIVED + timedelta(seconds=5), points(700), 10**7, transport=WS
    )

    assert [m.msg_id for m in first] == [m.msg_id for m in again]


def test_encode_rejections_carries_reason_source_and_excerpt() -> None:
    rejections = [
        Rejection(i, f"s{i}", "value must be a number, got a string", "value", {"v": "x" * 900})
        for i in range(501)
    ]

    messages = encode_rejections(
        "health", "p-1", RECEIVED, rejections, "dp.rejected.http", 64, transport=Transport.HTTP
    )

    assert len(messages) == 2
    first = orjson.loads(messages[0].payload)
    assert {k: first[k] for k in ("transport", "domain", "source_id", "received_at")} == {
        "transport": "http",
        "domain": "health",
        "source_id": "p-1",
        "received_at": "2026-03-01T00:00:00Z",
    }
    assert len(first["rejected"]) == 500
    assert first["rejected"][0]["reason"] == "value must be a number, got a string"
    assert first["rejected"][0]["excerpt"] == '{"v":"' + "x" * 58
    assert len(orjson.loads(messages[1].payload)["rejected"]) == 1
    assert messages[0].headers[MSG_ID_HEADER] != messages[1].headers[MSG_ID_HEADER]


@pytest.mark.parametrize(
    ("raw", "limit", "expected"),
    [
        ({"a": 1}, 100, '{"a":1}'),
        ([float("nan")], 100, "[null]"),
        ({"k": "\ud800"}, 100, "{'k': '\\ud800'}"),
        ("ééé", 4, '"é'),  # never cuts a UTF-8 character in half
    ],
)
def test_excerpt_is_bounded_json_text(raw: object, limit: int, expected: str) -> None:
    assert excerpt(raw, limit) == expected


@pytest.mark.parametrize(
    ("exc", "label"),
    [
        (nats.js.errors.NoStreamResponseError(), "no_stream"),
        (nats.errors.NoRespondersError(), "no_stream"),
        (TimeoutError(), "timeout"),
        (nats.errors.TimeoutError(), "timeout"),
        (nats.errors.ConnectionClosedError(), "disconnected"),
        (nats.errors.OutboundBufferLimitError(), "disconnected"),
        (nats.js.errors.APIError(code=503, description="JetStream not enabled"), "api_error"),
        (nats.errors.MaxPayloadError(), "other"),
        (ValueError("x"), "other"),
    ],
)
def test_error_type_labels_are_bounded(exc: BaseException, label: str) -> None:
    assert error_type(exc) == label


def test_error_type_labels_a_stalled_publish_a_timeout() -> None:
    assert error_type(nats.js.errors.TooManyStalledMsgsError()) == "timeout"
