"""Table-driven tests of ``normalize``: request JSON → envelope errors, accepted points and
per-point rejections (the point rules themselves are tested in libs/ingest)."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import pytest

from gateway_http.normalize import EnvelopeError, normalize_request

RECEIVED = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def envelope(points: list[Any], **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {"source_id": "server-01", "domain": "infrastructure"}
    body["data_points"] = points
    body.update(overrides)
    return body


def good(**fields: Any) -> dict[str, Any]:
    point: dict[str, Any] = {"stream_id": "cpu_usage", "value": 45.2}
    point.update(fields)
    return point


# --- envelope -----------------------------------------------------------------------------

ENVELOPE_CASES: list[tuple[str, Any, str, str]] = [
    ("body_array", [], "body", "body must be a JSON object, got an array"),
    ("source_missing", {"domain": "x", "data_points": [good()]}, "source_id", "is required"),
    ("domain_missing", {"source_id": "s", "data_points": [good()]}, "domain", "is required"),
    ("points_missing", {"source_id": "s", "domain": "x"}, "data_points", "is required"),
    ("source_empty", envelope([good()], source_id=""), "source_id", "must not be empty"),
    ("source_null", envelope([good()], source_id=None), "source_id", "got null"),
    ("source_too_long", envelope([good()], source_id="s" * 257), "source_id", "at most 256"),
    ("source_tab", envelope([good()], source_id="a\tb"), "source_id", "printable"),
    ("domain_upper", envelope([good()], domain="Infra"), "domain", "domain must match"),
    ("domain_trailing_newline", envelope([good()], domain="infra\n"), "domain", "must match"),
    ("domain_number", envelope([good()], domain=5), "domain", "domain must be a string"),
    ("domain_iot", envelope([good()], domain="iot"), "domain", "use the IoT endpoints"),
    ("points_object", envelope({"a": 1}), "data_points", "must be an array, got an object"),
    ("points_empty", envelope([]), "data_points", "at least one point"),
    ("unknown_top_level", envelope([good()], extra=[]), "extra", "unknown field(s) extra"),
]


@pytest.mark.parametrize(
    ("body", "field", "message"),
    [c[1:] for c in ENVELOPE_CASES],
    ids=[c[0] for c in ENVELOPE_CASES],
)
def test_normalize_request_refuses_bad_envelope(body: Any, field: str, message: str) -> None:
    with pytest.raises(EnvelopeError) as caught:
        normalize_request(body, RECEIVED, max_points=100)

    assert caught.value.field == field
    assert message in caught.value.message
    assert not caught.value.too_large


def test_normalize_request_refuses_too_many_points_as_too_large() -> None:
    with pytest.raises(EnvelopeError) as caught:
        normalize_request(envelope([good()] * 11), RECEIVED, max_points=10)

    assert caught.value.too_large
    assert caught.value.message == (
        "data_points has 11 points; at most 10 per request (split the request)"
    )


@pytest.mark.parametrize("source_id", ["server.01", "rack 4/unit*7", "ünïcødé-源", "a>b%c", 42])
def test_normalize_request_accepts_any_printable_source_id(source_id: Any) -> None:
    result = normalize_request(envelope([good()], source_id=source_id), RECEIVED, 100)

    assert result.source_id == str(source_id)
    assert len(result.accepted) == 1


def test_normalize_request_splits_good_and_bad_points_in_order() -> None:
    body = envelope(
        [good(stream_id="a"), good(stream_id="b", value=None), good(stream_id="c"), "junk"]
    )

    result = normalize_request(body, RECEIVED, 100)

    assert [p.stream_id for p in result.accepted] == ["a", "c"]
    assert [r.to_reply() for r in result.rejected] == [
        {"index": 1, "stream_id": "b", "reason": "value must be a number, got null"},
        {"index": 3, "stream_id": None, "reason": "point must be a JSON object, got a string"},
    ]
    assert (result.source_id, result.domain) == ("server-01", "infrastructure")
