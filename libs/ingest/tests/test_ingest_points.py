"""Table-driven tests of the shared point rules: one point as received → ``DataPoint`` or
``Rejection`` (the reason texts are what every gateway answers and publishes)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from tributary_contracts import DataPoint
from tributary_ingest.points import (
    DuplicateKeys,
    MalformedJson,
    Rejection,
    check_domain,
    check_value,
    normalize_point,
    parse_json,
    parse_timestamp,
)

RECEIVED = datetime(2026, 3, 1, 12, 0, 0, 123456, tzinfo=UTC)


def good(**fields: Any) -> dict[str, Any]:
    point: dict[str, Any] = {"stream_id": "cpu_usage", "value": 45.2}
    point.update(fields)
    return point


# --- accepted points ----------------------------------------------------------------------

ACCEPTED_CASES: list[tuple[str, dict[str, Any], dict[str, Any]]] = [
    (
        "iso_z",
        good(timestamp="2026-02-25T21:00:00Z"),
        {"ts": datetime(2026, 2, 25, 21, 0, tzinfo=UTC)},
    ),
    (
        "iso_offset_converted_to_utc",
        good(timestamp="2026-02-25T23:30:00+02:30"),
        {"ts": datetime(2026, 2, 25, 21, 0, tzinfo=UTC)},
    ),
    (
        "iso_naive_is_utc",
        good(timestamp="2026-02-25T21:00:00.250"),
        {"ts": datetime(2026, 2, 25, 21, 0, 0, 250000, tzinfo=UTC)},
    ),
    (
        "epoch_int",
        good(timestamp=1772053200),
        {"ts": datetime(2026, 2, 25, 21, 0, tzinfo=UTC)},
    ),
    (
        "epoch_float_keeps_microseconds",
        good(timestamp=1772053200.5),
        {"ts": datetime(2026, 2, 25, 21, 0, 0, 500000, tzinfo=UTC)},
    ),
    ("missing_timestamp_is_receive_time", good(), {"ts": RECEIVED}),
    ("null_timestamp_is_receive_time", good(timestamp=None), {"ts": RECEIVED}),
    ("int_value_is_float", good(value=7), {"value": 7.0}),
    ("negative_value", good(value=-1.5e-3), {"value": -1.5e-3}),
    ("integer_stream_id_as_text", good(stream_id=17), {"stream_id": "17"}),
    ("unicode_stream_id", good(stream_id="température/°C"), {"stream_id": "température/°C"}),
    ("dotted_stream_id", good(stream_id="BTCUSDT:price.last"), {"stream_id": "BTCUSDT:price.last"}),
    ("max_length_stream_id", good(stream_id="s" * 256), {"stream_id": "s" * 256}),
    (
        "all_optional_fields",
        good(metadata={"core": 0, "tags": ["a"]}, sequence=9, stream_type="cpu_usage"),
        {"metadata": {"core": 0, "tags": ["a"]}, "sequence": 9, "stream_type": "cpu_usage"},
    ),
    ("null_metadata_is_empty", good(metadata=None), {"metadata": {}}),
    ("null_sequence", good(sequence=None), {"sequence": None}),
    ("negative_sequence", good(sequence=-3), {"sequence": -3}),
]


@pytest.mark.parametrize(
    ("raw", "expected"), [c[1:] for c in ACCEPTED_CASES], ids=[c[0] for c in ACCEPTED_CASES]
)
def test_normalize_point_accepts(raw: dict[str, Any], expected: dict[str, Any]) -> None:
    point = normalize_point(raw, 0, RECEIVED)

    assert isinstance(point, DataPoint)
    for name, value in expected.items():
        assert getattr(point, name) == value
    # What the cheap constructor built is exactly what contract validation would build.
    validated = DataPoint.model_validate(point.model_dump())
    assert validated == point
    assert validated.model_dump_json() == point.model_dump_json()


# --- rejected points ----------------------------------------------------------------------

REJECTED_CASES: list[tuple[str, Any, str, str]] = [
    # (id, raw point, code, text the reason must contain)
    ("not_an_object", [1, 2], "point", "point must be a JSON object, got an array"),
    ("value_missing", {"stream_id": "a"}, "value", "value is required"),
    # The point policy (module docstring of tributary_ingest.points).
    ("iso_date_only", good(timestamp="2026-02-25"), "timestamp", "not a calendar date with"),
    ("iso_week_date", good(timestamp="2026-W09-3T10:00:00Z"), "timestamp", "not a calendar date"),
    ("nul_in_stream_id", good(stream_id="a\x00b"), "stream_id", "NUL character"),
    ("surrogate_in_stream_id", good(stream_id="a\ud800"), "stream_id", "lone UTF-16 surrogate"),
    ("blank_stream_id", good(stream_id="   "), "stream_id", "must not be blank"),
    ("formula_stream_id", good(stream_id="=HYPERLINK(1)"), "stream_id", "spreadsheet formula"),
    ("nfd_stream_id", good(stream_id="cafe\u0301"), "stream_id", "NFC"),
    ("int_beyond_2_53", good(value=2**53 + 1), "value", "not exactly representable"),
    ("nul_in_metadata_value", good(metadata={"k": "a\x00"}), "metadata", "NUL character"),
    ("nul_in_metadata_key", good(metadata={"k\x00": 1}), "metadata", "NUL character"),
    ("nan_in_metadata", good(metadata={"k": float("nan")}), "metadata", "finite"),
    ("surrogate_in_metadata", good(metadata={"k": "\udc80"}), "metadata", "surrogate"),
    ("value_string", good(value="45.2"), "value", "value must be a number, got the text '45.2'"),
    ("value_bool", good(value=True), "value", "value must be a number, got a boolean"),
    ("value_null", good(value=None), "value", "value must be a number, got null"),
    ("value_nan", good(value=float("nan")), "value", "got NaN"),
    ("value_inf", good(value=float("inf")), "value", "got Infinity"),
    ("value_neg_inf", good(value=float("-inf")), "value", "got Infinity"),
    ("value_nan_string", good(value="NaN"), "value", "finite number"),
    ("value_huge_int", good(value=10**400), "value", "too large"),
    ("stream_id_missing", {"value": 1.0}, "stream_id", "stream_id is required"),
    ("stream_id_empty", good(stream_id=""), "stream_id", "stream_id must not be empty"),
    ("stream_id_too_long", good(stream_id="s" * 257), "stream_id", "at most 256 characters"),
    ("stream_id_control", good(stream_id="cpu\nusage"), "stream_id", "printable"),
    ("stream_id_object", good(stream_id={"a": 1}), "stream_id", "must be a string"),
    ("stream_id_bool", good(stream_id=True), "stream_id", "got a boolean"),
    ("timestamp_garbage", good(timestamp="yesterday"), "timestamp", "is not ISO 8601"),
    ("timestamp_numeric_string", good(timestamp="1772053200"), "timestamp", "not ISO 8601"),
    ("timestamp_bool", good(timestamp=True), "timestamp", "got a boolean"),
    ("timestamp_object", good(timestamp={}), "timestamp", "got an object"),
    ("timestamp_millis", good(timestamp=1772053200000), "timestamp", "milliseconds?"),
    ("timestamp_before_1900", good(timestamp=-3e9), "timestamp", "outside the accepted range"),
    ("timestamp_nan", good(timestamp=float("nan")), "timestamp", "finite number"),
    ("timestamp_iso_year_1", good(timestamp="0001-01-01T00:00:00"), "timestamp", "outside"),
    ("metadata_array", good(metadata=[1]), "metadata", "metadata must be an object"),
    ("metadata_string", good(metadata="{}"), "metadata", "metadata must be an object"),
    ("metadata_too_big", good(metadata={"x": "y" * 8200}), "metadata", "at most 8192 bytes"),
    ("sequence_float", good(sequence=1.0), "sequence", "sequence must be an integer"),
    ("sequence_string", good(sequence="1"), "sequence", "sequence must be an integer"),
    ("sequence_bool", good(sequence=False), "sequence", "got a boolean"),
    ("sequence_overflow", good(sequence=2**63), "sequence", "64-bit"),
    ("stream_type_number", good(stream_type=3), "stream_type", "stream_type must be a string"),
    ("stream_type_empty", good(stream_type=""), "stream_type", "must not be empty"),
    ("unknown_field", good(ts="2026-02-25T21:00:00Z"), "unknown_field", "unknown field(s) ts"),
    ("unknown_fields_listed", good(b=1, a=2), "unknown_field", "unknown field(s) a, b"),
]


@pytest.mark.parametrize(
    ("raw", "code", "reason"), [c[1:] for c in REJECTED_CASES], ids=[c[0] for c in REJECTED_CASES]
)
def test_normalize_point_rejects(raw: Any, code: str, reason: str) -> None:
    rejection = normalize_point(raw, 3, RECEIVED)

    assert isinstance(rejection, Rejection)
    assert rejection.index == 3
    assert rejection.code == code
    assert reason in rejection.reason
    assert rejection.raw is raw


def test_rejection_names_every_problem_and_keeps_stream_id() -> None:
    rejection = normalize_point(good(value=True, sequence="x", extra=1), 0, RECEIVED)

    assert isinstance(rejection, Rejection)
    assert rejection.stream_id == "cpu_usage"
    assert rejection.code == "value"  # the first problem labels the metric
    assert rejection.reason == (
        "value must be a number, got a boolean; sequence must be an integer, got a string; "
        "unknown field(s) extra; expected stream_id, value, timestamp, metadata, sequence, "
        "stream_type"
    )


def test_rejection_of_point_without_usable_stream_id_has_none() -> None:
    rejection = normalize_point({"stream_id": ["x"], "value": 1}, 0, RECEIVED)

    assert isinstance(rejection, Rejection)
    assert rejection.stream_id is None
    assert rejection.to_reply() == {
        "index": 0,
        "stream_id": None,
        "reason": "stream_id must be a string, got an array",
    }


# --- timestamps ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (0, datetime(1970, 1, 1, tzinfo=UTC)),
        (-86400, datetime(1969, 12, 31, tzinfo=UTC)),
        (1772053200.000001, datetime(2026, 2, 25, 21, 0, 0, 1, tzinfo=UTC)),
        ("2026-02-25T21:00:00.123456789Z", datetime(2026, 2, 25, 21, 0, 0, 123456, tzinfo=UTC)),
        ("2026-02-25 21:00", datetime(2026, 2, 25, 21, 0, tzinfo=UTC)),
        (
            "2026-02-25T21:00:00-05:00",
            datetime(2026, 2, 25, 21, 0, tzinfo=timezone(timedelta(hours=-5))),
        ),
    ],
)
def test_parse_timestamp_accepts_iso_and_epoch_seconds(value: Any, expected: datetime) -> None:
    parsed = parse_timestamp(value)

    assert parsed == expected
    assert isinstance(parsed, datetime) and parsed.utcoffset() == timedelta(0)


def test_parse_timestamp_quotes_at_most_64_characters() -> None:
    reason = parse_timestamp("y" * 100)

    assert isinstance(reason, str) and reason.startswith("timestamp '" + "y" * 64 + "' is not ISO")


# --- JSON parsing -------------------------------------------------------------------------


def test_parse_json_turns_python_nan_and_overflow_into_values_not_errors() -> None:
    parsed = parse_json(b'{"v": [NaN, Infinity, -Infinity, 1e999]}')

    assert [str(v) for v in parsed["v"]] == ["nan", "inf", "-inf", "inf"]


@pytest.mark.parametrize(
    ("what", "words"), [("body", "body is not"), ("message", "message is not")]
)
@pytest.mark.parametrize("data", [b"{", b"not json", b'{"a": 1,}', b"\xff\xfe", "{"])
def test_parse_json_refuses_malformed_input_naming_it(data: Any, what: str, words: str) -> None:
    with pytest.raises(MalformedJson, match=f"{words} valid JSON"):
        parse_json(data, what=what)


def test_metadata_nested_deeper_than_the_limit_is_rejected_naming_the_limit() -> None:
    from datetime import UTC, datetime

    from tributary_ingest.points import MAX_METADATA_DEPTH, Rejection, normalize_point

    def nested(levels: int) -> dict[str, object]:
        value: dict[str, object] = {}
        for _ in range(levels - 1):
            value = {"a": value}
        return value

    now = datetime.now(UTC)
    ok = normalize_point(
        {"stream_id": "s", "value": 1, "metadata": nested(MAX_METADATA_DEPTH)}, 0, now
    )
    deep = normalize_point(
        {"stream_id": "s", "value": 1, "metadata": nested(MAX_METADATA_DEPTH + 1)}, 0, now
    )
    assert not isinstance(ok, Rejection)
    assert isinstance(deep, Rejection) and deep.code == "metadata"
    limit = MAX_METADATA_DEPTH
    assert deep.reason == f"metadata nests objects/arrays more than {limit} levels deep"


@pytest.mark.parametrize(
    ("body", "duplicated"),
    [
        (b'[{"stream_id": "a", "value": 1, "value": 2}]', True),
        (b'[{"stream_id": "a:b", "value": 1, "metadata": {"k": ":", "j": "\\":"}}]', False),
        (b'[{"stream_id": "a", "value": 1, "metadata": {"k": 1, "k": 2}}]', True),
        (b'[{"stream_id": "a", "value": NaN, "value": 1}]', True),  # the fallback parser
        (b'[{"stream_id": "a", "value": 1, "value": 2, "metadata": {"t": "10:00"}}]', True),
        (b'[{"stream_id": "a", "value": 1, "metadata": {"t": "10:00", "t": "11:00"}}]', True),
    ],
)
def test_duplicate_json_keys_are_refused_per_point(body: bytes, duplicated: bool) -> None:
    [raw] = parse_json(body)

    point = normalize_point(raw, 0, RECEIVED)

    assert isinstance(point, Rejection) is duplicated
    if duplicated:
        assert "more than once" in point.reason


def _has_duplicates(value: Any) -> bool:
    if isinstance(value, DuplicateKeys):
        return True
    if isinstance(value, dict):
        value = list(value.values())
    return isinstance(value, list) and any(_has_duplicates(child) for child in value)


def _object_text(pairs: list[tuple[str, Any]]) -> str:
    return "{" + ",".join(f"{orjson.dumps(k).decode()}:{_text(v)}" for k, v in pairs) + "}"


def _text(value: Any) -> str:
    if isinstance(value, list) and value and isinstance(value[0], tuple):
        return _object_text(value)
    return orjson.dumps(value).decode()


_KEYS = st.sampled_from(["a", "b", "a:b", ":", 'q"', "\\:"])
_SCALARS = st.one_of(st.integers(-5, 5), st.sampled_from(["x", "1:2", ":", '"', "\\", "a\\:"]))
_OBJECTS = st.recursive(
    st.lists(st.tuples(_KEYS, _SCALARS), max_size=4),
    lambda inner: st.lists(st.tuples(_KEYS, st.one_of(_SCALARS, inner)), max_size=4),
    max_leaves=12,
)


@settings(max_examples=300, deadline=None)
@given(_OBJECTS, st.booleans())
def test_duplicate_keys_are_found_whatever_the_strings_hold(
    pairs: list[tuple[str, Any]], as_text: bool
) -> None:
    """The colon count shortcut and the regex agree with a parser that sees every pair: a
    document names a key twice in some object exactly when ``parse_json`` says so."""
    text = "[" + _object_text(pairs) + "]"

    def named_twice(value: Any) -> bool:
        if isinstance(value, list) and value and isinstance(value[0], tuple):
            keys = [k for k, _ in value]
            return len(keys) != len(set(keys)) or any(named_twice(v) for _, v in value)
        return False

    parsed = parse_json(text if as_text else text.encode())

    assert _has_duplicates(parsed) is named_twice(pairs)


def test_a_deeply_nested_document_is_counted_without_recursion() -> None:
    depth = 1000  # orjson parses it; a recursive walk would hit Python's recursion limit
    body = b'{"k":' * depth + b"1" + b"}" * depth

    parsed = parse_json(body)

    for _ in range(depth):
        parsed = parsed["k"]
    assert parsed == 1


def test_a_rejection_with_a_lone_surrogate_can_be_encoded() -> None:
    [raw] = parse_json(b'[{"stream_id": "\\ud800x", "value": 1, "\\udc80": 2}]')

    point = normalize_point(raw, 0, RECEIVED)

    assert isinstance(point, Rejection)
    assert orjson.loads(orjson.dumps(point.to_reply()))["stream_id"] == "\\ud800x"


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("infrastructure", None),
        ("a-b_9", None),
        ("Infra", "domain must match ^[a-z][a-z0-9_-]{0,31}$ (lower case, e.g. infrastructure), "
         "got 'Infra'"),
        ("infra\n", "got 'infra\\n'"),
        ("x" * 40, "got '" + "x" * 40 + "'"),
        (3, "domain must be a string, got a number"),
        (None, "domain must be a string, got null"),
    ],
)
def test_check_domain_names_the_pattern_and_what_was_sent(value: Any, expected: str | None) -> None:
    problem = check_domain(value)

    if expected is None:
        assert problem is None
    else:
        assert problem is not None and problem.endswith(expected)


def test_a_value_column_names_itself_in_the_shared_reasons() -> None:
    assert check_value("high", "cpu") == "cpu must be a number, got the text 'high'"
    assert check_value(" -inf ", "cpu") == "cpu must be a finite number, got ' -inf '"
    assert check_value(True, "cpu") == "cpu must be a number, got a boolean"
    assert check_value(2**53 + 1, "cpu") == (
        "cpu 9007199254740993 is not exactly representable as a double-precision number "
        "(integers beyond 2^53 would be rounded); send it as a float"
    )


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (4_200_000_000, "outside the accepted range for epoch seconds (1900–2100)"),
        (1_772_000_000_000, "outside the accepted range for epoch seconds (1900–2100) "
         "(milliseconds? send seconds)"),
        ("1772000000", "'1772000000' is not ISO 8601: send epoch seconds as a JSON number"),
        ("soon", "timestamp 'soon' is not ISO 8601 (e.g. 2026-02-25T21:00:00Z) or epoch seconds"),
    ],
)
def test_timestamp_reasons_hint_at_the_likely_mistake_only_where_it_fits(
    value: Any, expected: str
) -> None:
    reason = parse_timestamp(value)

    assert isinstance(reason, str) and reason.endswith(expected)
