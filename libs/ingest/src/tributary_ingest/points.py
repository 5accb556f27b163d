"""One point as received (JSON) → a ``DataPoint`` or a per-point ``Rejection`` (no I/O here).

The point policy, the same on every transport (HTTP, WebSocket, MQTT, CSV), each breach a
per-point rejection with its reason — nothing is accepted that could later fail to store:

- **text PostgreSQL can store**: no NUL character and no lone UTF-16 surrogate, in ids, metadata
  keys or values;
- **ids** (source, stream, stream type) are 1–256 printable characters, not blank, in Unicode
  NFC (the composed form: NFC and NFD spellings would otherwise be two streams), and do not
  start with ``=``, ``+`` or ``@`` (spreadsheet formulas);
- **numbers survive as doubles**: ``value`` finite and, if an integer, exactly representable
  (|n| ≤ 2^53 or a double's own integer); no NaN/Infinity inside metadata either;
- **no duplicate keys** in a JSON object (the last would silently win);
- **domains** match ``DOMAIN_PATTERN``;
- **timestamps** are a date *and* time (ISO 8601 calendar dates) or epoch seconds (CSV files may
  name another unit), between 1900 and 2100: a bare date or an ISO week/ordinal date is refused
  rather than taken as midnight.

The rules every normaliser applies: gateway-http, gateway-ws and gateway-mqtt call them per
point; csv-importer's vectorised reader converts cells in bulk and asks the functions here
(``missing``, ``check_value``, ``value_text_problem``, ``parse_timestamp``,
``epoch_out_of_range``, ``check_identifier``, ``check_domain``) about every cell it refuses. So
a point is accepted on every transport alike, with the same reason texts. A rejection's
``reason`` names every problem of the point, and its ``code`` (the field of the first problem)
is a bounded label for metrics. Checks are at least as strict as the ``DataPoint`` model, so
accepted points are built without a second validation (``build_point``); the unit tests verify
that each accepted point validates.
"""

from __future__ import annotations

import json
import math
import re
import unicodedata
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson

from tributary_contracts import DataPoint
from tributary_contracts.models import DOMAIN_PATTERN, MAX_ID_CHARS, MAX_METADATA_BYTES

MAX_METADATA_DEPTH = 16
"""Deepest nesting of objects/arrays inside a point's metadata (the object itself is level 1)."""
IOT_DOMAIN = "iot"
POINT_FIELDS = ("stream_id", "value", "timestamp", "metadata", "sequence", "stream_type")
_POINT_FIELD_SET = frozenset(POINT_FIELDS)
DOMAIN_RE = re.compile(DOMAIN_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_TIMESTAMP = datetime(1900, 1, 1, tzinfo=UTC)
"""Earliest accepted event time: older values are almost surely unit or parsing mistakes."""
MAX_TIMESTAMP = datetime(2100, 1, 1, tzinfo=UTC)
"""Latest accepted event time: epoch milliseconds sent as seconds land far beyond it."""
_MIN_EPOCH = (MIN_TIMESTAMP - _EPOCH).total_seconds()
_MAX_EPOCH = (MAX_TIMESTAMP - _EPOCH).total_seconds()
INT64 = 2**63
EXACT_INT = 2**53
"""Integers up to this magnitude are exact as doubles (the type ``value`` is stored as)."""
FORMULA_PREFIXES = ("=", "+", "@")
"""An id starting with one of these is a formula to a spreadsheet opening an export."""
ISO_DATETIME_RE = re.compile(r"\d{4}-\d{2}-\d{2}[Tt ]\d{2}:\d{2}")
"""The start every accepted ISO 8601 timestamp string has: a calendar date and a time."""
ISO_DATE_RE = re.compile(r"\d{4}-[\dWw]")
"""A string that starts like an ISO 8601 date (calendar, week or ordinal)."""
_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"')
"""A JSON string literal (the unrolled form: 2.5× faster than ``"(?:[^"\\]|\\.)*"``)."""


class DuplicateKeys(dict):  # type: ignore[type-arg]
    """A JSON object that named some key twice (``duplicates``); parsed only to be refused."""

    duplicates: tuple[str, ...] = ()


class MalformedJson(ValueError):
    """The body/frame is not JSON at all."""


@dataclass(frozen=True)
class Rejection:
    """One point that was not accepted, with why."""

    index: int
    stream_id: str | None
    reason: str
    code: str  # bounded label: the field of the first problem (value, timestamp, …)
    raw: Any  # the point as received, for the payload excerpt on dp.rejected

    def to_reply(self) -> dict[str, Any]:
        return {"index": self.index, "stream_id": self.stream_id, "reason": self.reason}


def parse_json(data: bytes | str, *, what: str = "body") -> Any:
    """Parse ``data``; the standard library is the fallback so ``NaN``/``Infinity``/``1e999``
    (which Python's ``json.dumps`` emits) become per-point rejections instead of an error.
    ``what`` names the input in ``MalformedJson`` ("body is not valid JSON: …").

    An object that names a key twice comes back as a ``DuplicateKeys`` dict (refused by the
    checks below, per point). Detecting it costs a count of the members parsed and of the
    document's colons, and a regex pass only when some string holds a colon: the members of a
    valid JSON document are its colons outside strings."""
    try:
        value = orjson.loads(data)
    except orjson.JSONDecodeError as fast_error:
        try:
            return json.loads(data, object_pairs_hook=_object)
        except (ValueError, RecursionError):
            raise MalformedJson(f"{what} is not valid JSON: {fast_error}") from None
    if not isinstance(value, dict | list):
        return value
    raw = data.encode() if isinstance(data, str) else data
    members = _members(value)
    # Every colon outside strings is one member, and members only collapse: so as many colons
    # in all as members means none is in a string and no key is named twice (no regex pass).
    if raw.count(b":") != members and _JSON_STRING.sub(b"", raw).count(b":") != members:
        return json.loads(data, object_pairs_hook=_object)
    return value


def _object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out = dict(pairs)
    if len(out) == len(pairs):
        return out
    counts: dict[str, int] = {}
    for key, _ in pairs:
        counts[key] = counts.get(key, 0) + 1
    dup = DuplicateKeys(out)
    dup.duplicates = tuple(sorted(k for k, n in counts.items() if n > 1))
    return dup


def _members(value: Any) -> int:
    """Key/value pairs in every object of ``value`` (a document orjson parsed: exact ``dict``
    and ``list``; a loop, not recursion, whatever the nesting)."""
    count = 0
    stack = [value]
    pop, push = stack.pop, stack.append
    while stack:
        item = pop()
        if type(item) is dict:
            count += len(item)
            item = item.values()
        for v in item:
            kind = type(v)
            if kind is dict or kind is list:
                push(v)
    return count


def duplicate_problem(value: Any, what: str) -> str | None:
    """The reason to refuse ``value`` (an object) for naming keys twice, or None."""
    if isinstance(value, DuplicateKeys):
        names = ", ".join(repr(safe_text(k)[:64]) for k in value.duplicates)
        return f"{what} names key(s) {names} more than once"
    return None


def safe_text(text: str) -> str:
    """``text`` with lone surrogates escaped (``\\ud800``), so it can be encoded as UTF-8 in a
    reply or an excerpt."""
    try:
        text.encode()
    except UnicodeEncodeError:
        return text.encode("utf-8", "backslashreplace").decode()
    return text


def check_identifier(value: Any, name: str) -> str | None:
    """Problem with ``value`` as a 1–256 printable-character id, or None when fine."""
    if not isinstance(value, str):
        return f"{name} must be a string, got {json_type(value)}"
    if not value:
        return f"{name} must not be empty"
    if len(value) > MAX_ID_CHARS:
        return f"{name} must be at most {MAX_ID_CHARS} characters, got {len(value)}"
    if not value.isprintable():
        if "\x00" in value:
            return f"{name} must not contain a NUL character (PostgreSQL text cannot store it)"
        if any("\ud800" <= c <= "\udfff" for c in value):
            return f"{name} must not contain a lone UTF-16 surrogate (not encodable as UTF-8)"
        return f"{name} must contain printable characters only"
    if value.isspace():
        return f"{name} must not be blank"
    if value.startswith(FORMULA_PREFIXES):
        return f"{name} must not start with '=', '+' or '@' (a spreadsheet formula)"
    if not value.isascii() and not unicodedata.is_normalized("NFC", value):
        return (
            f"{name} must be in Unicode NFC form (composed characters), e.g. "
            f"{unicodedata.normalize('NFC', value)[:64]!r}"
        )
    return None


def json_type(value: Any) -> str:
    """``value``'s JSON type as a reason text uses it ("a number", "an array", "null", …)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int | float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "an array"
    if isinstance(value, dict):
        return "an object"
    return type(value).__name__


def id_text(value: Any) -> Any:
    """Integer ids (stream 17, source 42) are accepted as their decimal text."""
    if isinstance(value, int) and not isinstance(value, bool):
        return str(value)
    return value


def clip(text: str, limit: int = 64) -> str:
    """``text`` cut to ``limit`` characters, with "…" where it was cut."""
    return text if len(text) <= limit else text[:limit] + "…"


TIMESTAMP_EXAMPLE = "2026-02-25T21:00:00Z"
_NUMBER_TEXT = re.compile(r"\s*[+-]?(\d+\.?\d*|\.\d+)([eE][+-]?\d+)?\s*")
MILLISECONDS_MAGNITUDE = 1e11
"""Epoch times from this magnitude on are milliseconds (today: 1.7e12) rather than seconds."""


def parse_timestamp(value: Any) -> datetime | str:
    """UTC datetime of an ISO 8601 string or epoch seconds, or the problem as text (a reason
    quotes at most 64 characters of a bad string)."""
    if isinstance(value, str):
        if ISO_DATE_RE.match(value) and not ISO_DATETIME_RE.match(value):
            return (
                f"timestamp {value[:64]!r} is not a calendar date with a time of day (a bare "
                f"date, week or ordinal date is refused, not taken as midnight); e.g. "
                f"{TIMESTAMP_EXAMPLE}"
            )
        try:
            if not ISO_DATETIME_RE.match(value):
                raise ValueError(value)
            ts = datetime.fromisoformat(value)
        except ValueError:
            if _NUMBER_TEXT.fullmatch(value):
                return (
                    f"timestamp {value[:64]!r} is not ISO 8601: send epoch seconds as a JSON number"
                )
            return not_a_timestamp(value)
        ts = ts.replace(tzinfo=UTC) if ts.tzinfo is None else ts.astimezone(UTC)
        if not MIN_TIMESTAMP <= ts < MAX_TIMESTAMP:
            return timestamp_out_of_range(value)
        return ts
    if isinstance(value, bool) or not isinstance(value, int | float):
        return f"timestamp must be an ISO 8601 string or epoch seconds, got {json_type(value)}"
    if not (isinstance(value, int) or math.isfinite(value)):
        return "timestamp must be a finite number of epoch seconds"
    if not _MIN_EPOCH <= value < _MAX_EPOCH:
        hint = " (milliseconds? send seconds)" if value >= MILLISECONDS_MAGNITUDE else ""
        return epoch_out_of_range(str(value), "seconds", hint)
    # timedelta keeps microsecond precision where fromtimestamp would round through floats.
    return _EPOCH + timedelta(seconds=value)


def not_a_timestamp(text: str) -> str:
    """The reason for a timestamp text that is neither ISO 8601 nor epoch seconds."""
    return (
        f"timestamp {text[:64]!r} is not ISO 8601 (e.g. {TIMESTAMP_EXAMPLE}) "
        "or epoch seconds"
    )


def timestamp_out_of_range(text: str) -> str:
    """The reason for an ISO 8601 ``text`` outside ``MIN_TIMESTAMP``–``MAX_TIMESTAMP``."""
    return (
        f"timestamp {text[:64]!r} is outside the accepted range "
        f"{MIN_TIMESTAMP.year}–{MAX_TIMESTAMP.year}"
    )


def epoch_out_of_range(shown: str, unit: str, hint: str = "") -> str:
    """The reason for an epoch time (``shown`` as sent, in ``unit``) outside the range;
    ``hint`` suggests the likely mistake."""
    return (
        f"timestamp {shown[:32]} is outside the accepted range for epoch {unit} "
        f"({MIN_TIMESTAMP.year}–{MAX_TIMESTAMP.year}){hint}"
    )


def missing(name: str) -> str:
    """The reason for a required field (or CSV cell) that is absent or empty."""
    return f"{name} is required"


def check_value(value: Any, name: str = "value") -> float | str:
    """``value`` as a finite float, or the problem as text (``name``: the field, or a wide
    CSV file's column)."""
    if isinstance(value, bool):
        return f"{name} must be a number, got a boolean"
    if isinstance(value, float):
        if math.isnan(value):
            return f"{name} must be a finite number, got NaN"
        if math.isinf(value):
            return f"{name} must be a finite number, got Infinity"
        return value
    if isinstance(value, int):
        try:
            number = float(value)
        except OverflowError:
            return f"{name} is too large for a double-precision number"
        if abs(value) > EXACT_INT and int(number) != value:
            return (
                f"{name} {str(value)[:32]} is not exactly representable as a double-precision "
                "number (integers beyond 2^53 would be rounded); send it as a float"
            )
        return number
    if isinstance(value, str):
        return value_text_problem(value, name)
    return f"{name} must be a number, got {json_type(value)}"


def value_text_problem(text: str, name: str = "value") -> str:
    """The reason a value given as text (a JSON string, a CSV cell that is not a usable number)
    is refused."""
    try:
        finite = math.isfinite(float(text))
    except ValueError:
        finite = True  # not a number at all
    if not finite:  # nan, inf, 1e400, …
        return f"{name} must be a finite number, got {text[:32]!r}"
    return f"{name} must be a number, got the text {text[:32]!r}"


def check_domain(value: Any) -> str | None:
    """Problem with ``value`` as a domain, or None when it matches ``DOMAIN_PATTERN``."""
    if not isinstance(value, str):
        return f"domain must be a string, got {json_type(value)}"
    if not DOMAIN_RE.fullmatch(value):
        return (
            f"domain must match {DOMAIN_PATTERN} (lower case, e.g. infrastructure), "
            f"got {safe_text(value[:64])!r}"
        )
    return None


def check_metadata(value: Any) -> dict[str, Any] | str:
    """``value`` as point metadata (a JSON object of bounded size, within the point policy), or
    the problem as text."""
    if not isinstance(value, dict):
        return f"metadata must be an object, got {json_type(value)}"
    if not value:
        return value
    try:
        size = len(orjson.dumps(value))
    except (orjson.JSONEncodeError, TypeError) as exc:
        if "surrogates not allowed" in str(exc) or "str is not valid UTF-8" in str(exc):
            return "metadata must not contain a lone UTF-16 surrogate (not encodable as UTF-8)"
        return f"metadata cannot be encoded as JSON: {exc}"
    if size > MAX_METADATA_BYTES:
        return f"metadata is {size} bytes of JSON; at most {MAX_METADATA_BYTES} bytes"
    return _metadata_problem(value, MAX_METADATA_DEPTH) or value


def _metadata_problem(value: Any, levels: int) -> str | None:
    """What in ``value`` (a dict or list) breaks the point policy, or None."""
    if levels <= 0:
        return f"metadata nests objects/arrays more than {MAX_METADATA_DEPTH} levels deep"
    if isinstance(value, dict):
        if problem := duplicate_problem(value, "a metadata object"):
            return problem
        if any("\x00" in k for k in value):
            return "metadata keys must not contain a NUL character (PostgreSQL cannot store it)"
        children: Any = value.values()
    else:
        children = value
    for child in children:
        if isinstance(child, str):
            if "\x00" in child:
                return (
                    "metadata values must not contain a NUL character (PostgreSQL cannot store it)"
                )
        elif isinstance(child, float):
            if not math.isfinite(child):
                return (
                    "metadata values must be finite numbers (NaN/Infinity would be stored as null)"
                )
        elif isinstance(child, int) and not isinstance(child, bool):
            if abs(child) > EXACT_INT:
                return f"metadata number {str(child)[:32]} is beyond 2^53: not exact as a double"
        elif isinstance(child, dict | list) and (problem := _metadata_problem(child, levels - 1)):
            return problem
    return None


def check_sequence(sequence: Any) -> str | None:
    """Problem with a (non-null) ``sequence``, or None when it is a signed 64-bit integer."""
    if isinstance(sequence, bool) or not isinstance(sequence, int):
        return f"sequence must be an integer, got {json_type(sequence)}"
    if not -INT64 <= sequence < INT64:
        return "sequence must fit in a signed 64-bit integer"
    return None


def check_measurement(
    raw: dict[Any, Any],
    received_at: datetime,
    problems: list[tuple[str, str]],
) -> tuple[float | str, datetime | str, dict[str, Any] | str, Any]:
    """``(value, ts, metadata, sequence)`` of a point object, checked in that order; each
    problem is appended to ``problems`` as ``(code, reason)``. A missing or null timestamp is
    ``received_at``, missing or null metadata ``{}``."""
    value: float | str = missing("value")
    if "value" in raw:
        value = check_value(raw["value"])
    if isinstance(value, str):
        problems.append(("value", value))

    ts: datetime | str = received_at
    stamp = raw.get("timestamp")
    if stamp is not None:
        ts = parse_timestamp(stamp)
        if isinstance(ts, str):
            problems.append(("timestamp", ts))

    metadata: dict[str, Any] | str = {}
    if raw.get("metadata") is not None:
        metadata = check_metadata(raw["metadata"])
        if isinstance(metadata, str):
            problems.append(("metadata", metadata))

    sequence = raw.get("sequence")
    if sequence is not None:
        problem = check_sequence(sequence)
        if problem:
            problems.append(("sequence", problem))
    return value, ts, metadata, sequence


def normalize_point(raw: Any, index: int, received_at: datetime) -> DataPoint | Rejection:
    """One point of a request's/message's list as a ``DataPoint``, or why it was rejected."""
    if not isinstance(raw, dict):
        return Rejection(
            index, None, f"point must be a JSON object, got {json_type(raw)}", "point", raw
        )
    problems: list[tuple[str, str]] = []  # (code, reason)
    if problem := duplicate_problem(raw, "the point"):
        problems.append(("duplicate_key", problem))

    stream_id = id_text(raw.get("stream_id"))
    if "stream_id" not in raw:
        problems.append(("stream_id", missing("stream_id")))
    else:
        problem = check_identifier(stream_id, "stream_id")
        if problem:
            problems.append(("stream_id", problem))

    value, ts, metadata, sequence = check_measurement(raw, received_at, problems)

    stream_type = raw.get("stream_type")
    if stream_type is not None:
        problem = check_identifier(stream_type, "stream_type")
        if problem:
            problems.append(("stream_type", problem))

    if len(raw) > len(POINT_FIELDS) or not _POINT_FIELD_SET.issuperset(raw):
        problems.append(("unknown_field", unknown_fields(raw, _POINT_FIELD_SET, POINT_FIELDS)))

    if problems:
        shown_id = stream_id if isinstance(stream_id, str) else None
        if shown_id is not None:
            shown_id = safe_text(shown_id[:MAX_ID_CHARS])
        reason = safe_text("; ".join(reason for _, reason in problems))
        return Rejection(index, shown_id, reason, problems[0][0], raw)
    return build_point(
        {
            "stream_id": stream_id,
            "value": value,
            "ts": ts,
            "stream_type": stream_type,
            "sequence": sequence,
            "metadata": metadata,
            "legacy": None,
        }
    )


def unknown_fields(raw: dict[Any, Any], allowed: frozenset[str], expected: tuple[str, ...]) -> str:
    """The reason naming ``raw``'s fields outside ``allowed``."""
    unknown = sorted(safe_text(str(k))[:64] for k in raw if k not in allowed)
    return f"unknown field(s) {', '.join(unknown)}; expected {', '.join(expected)}"


_ALL_POINT_FIELDS = frozenset(DataPoint.model_fields)
_new_point = DataPoint.__new__
_set = object.__setattr__


def build_point(values: dict[str, Any]) -> DataPoint:
    """A ``DataPoint`` from already-checked values holding every field.

    What ``model_construct`` does minus its per-field default handling: ~1.3 µs instead of
    ~5.4 µs per point, a quarter of the CPU of a 100-point request. The unit tests check that
    such points equal (and serialise like) validated ones.
    """
    point = _new_point(DataPoint)
    _set(point, "__dict__", values)
    _set(point, "__pydantic_fields_set__", set(_ALL_POINT_FIELDS))
    _set(point, "__pydantic_extra__", None)
    _set(point, "__pydantic_private__", None)
    return point
