"""Domain code: option detection, timestamp parsing, chunked conversion and per-row errors."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pandas as pd
import pytest
from csv_importer.reading import (
    BadLines,
    CsvFormat,
    CsvOptions,
    OptionsProblem,
    RowError,
    convert_chunk,
    detect_options,
    leftover_bad_lines,
    parse_timestamps,
    read_chunks,
    to_datetime,
)

from tributary_contracts import DataPoint
from tributary_ingest.points import Rejection, normalize_point

SEED_CSV = (
    "timestamp,temperature,humidity,pressure\n"
    "1708900000.0,23.5,65.2,1013.25\n"
    "1708900001.0,23.6,65.1,1013.24\n"
    "1708900002.0,23.7,65.0,1013.23\n"
)
T0 = datetime(2024, 2, 25, 22, 26, 40, tzinfo=UTC)  # 1708900000


def detect(text: str | bytes, **fields: str) -> CsvOptions:
    data = text.encode() if isinstance(text, str) else text
    try:
        data.decode()
        valid = True
    except UnicodeDecodeError:
        valid = False
    return detect_options({"source_id": "src", "domain": "d", **fields}, data, valid)


def convert_all(
    tmp_path: Path, text: str | bytes, chunk_rows: int = 1000, slice_rows: int = 1000, **fields: str
) -> tuple[list[tuple[str, str, float, datetime]], list[RowError], int, int]:
    """(source, stream, value, ts) of every point, the errors, rows, points rejected."""
    data = text.encode() if isinstance(text, str) else text
    options = detect(data, **fields)
    path = tmp_path / "f.csv"
    path.write_bytes(data)
    bad = BadLines()
    points: list[tuple[str, str, float, datetime]] = []
    errors: list[RowError] = []
    rows = rejected = 0
    last = 0
    for frame in read_chunks(path, options, chunk_rows, bad):
        for result in convert_chunk(
            frame, options, fields.get("source_id", "src"), bad, last + 1, slice_rows
        ):
            for source, source_points in result.points.items():
                pts = source_points.data_points()
                for p in pts:
                    DataPoint.model_validate(p.model_dump())  # built points are valid points
                    points.append((source, p.stream_id, p.value, p.ts))
            errors += result.errors
            rows += result.rows
            rejected += result.points_rejected
            last = result.last_line
    tail = leftover_bad_lines(bad, last, options, "src")
    errors += tail.errors
    rows += tail.rows
    rejected += tail.points_rejected
    return points, errors, rows, rejected


# -- detection -----------------------------------------------------------------------------


def test_the_seed_example_is_wide_with_three_numeric_value_columns() -> None:
    options = detect(SEED_CSV)

    assert options.format is CsvFormat.WIDE
    assert options.value_columns == ["temperature", "humidity", "pressure"]
    assert (options.delimiter, options.decimal, options.encoding) == (",", ".", "utf-8-sig")


def test_timestamp_stream_id_value_columns_are_detected_as_long_format() -> None:
    options = detect("timestamp,stream_id,value,source_id\n1,a,1\n", source_id="")

    assert options.format is CsvFormat.LONG and options.has_source_column


def test_a_text_column_is_not_a_value_column_by_default() -> None:
    options = detect("timestamp,site,temp\n1,north,1.5\n2,south,2.5\n")

    assert options.value_columns == ["temp"]


@pytest.mark.parametrize(
    ("text", "delimiter"),
    [("a;b;c\n1;2;3\n", ";"), ("a\tb\n1\t2\n", "\t"), ("a|b\n1|2\n", "|"), ("a,b\n1,2\n", ",")],
)
def test_the_delimiter_is_sniffed(text: str, delimiter: str) -> None:
    assert detect(text, timestamp_column="a").delimiter == delimiter


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (b"\xef\xbb\xbftimestamp,t\n1,2\n", "utf-8-sig"),
        ("timestamp,température\n1,2\n".encode(), "utf-8-sig"),
        ("timestamp,température\n1,2\n".encode("latin-1"), "latin-1"),
    ],
)
def test_the_encoding_is_utf8_with_or_without_bom_else_latin1(data: bytes, encoding: str) -> None:
    options = detect(data)

    assert options.encoding == encoding
    assert options.columns == ["timestamp", "t" if data.endswith(b"t\n1,2\n") else "température"]


@pytest.mark.parametrize(
    ("fields", "field", "message"),
    [
        ({"timestamp_column": "time"}, "timestamp_column", "timestamp column 'time' is not in"),
        ({"value_columns": '["nope"]'}, "value_columns", "value column(s) nope not in the file"),
        ({"timestamp_format": "excel"}, "timestamp_format", "must be unix, iso8601 or auto"),
        ({"timestamp_unit": "ns"}, "timestamp_unit", "must be s, ms or us"),
        ({"format": "long"}, "format", "long format needs column(s) stream_id, value"),
        ({"source_id": ""}, "source_id", "source_id is required"),
        ({"decimal": ";"}, "decimal", "decimal must be"),
        ({"encoding": "utf-16"}, "encoding", "encoding must be auto"),
    ],
)
def test_impossible_options_name_their_field(
    fields: dict[str, str], field: str, message: str
) -> None:
    with pytest.raises(OptionsProblem) as caught:
        detect(SEED_CSV, **fields)

    assert caught.value.field == field
    assert message in caught.value.message


def test_value_columns_may_be_a_json_or_comma_list() -> None:
    assert detect(SEED_CSV, value_columns='["pressure", "humidity"]').value_columns == [
        "pressure",
        "humidity",
    ]
    assert detect(SEED_CSV, value_columns="humidity, temperature").value_columns == [
        "humidity",
        "temperature",
    ]


# -- timestamps ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("cell", "fmt", "unit", "expected"),
    [
        ("1708900000", "unix", None, T0),
        ("1708900000.123456", "unix", "s", datetime(2024, 2, 25, 22, 26, 40, 123456, tzinfo=UTC)),
        ("1708900000123", "unix", "ms", datetime(2024, 2, 25, 22, 26, 40, 123000, tzinfo=UTC)),
        ("1708900000123456", "unix", "us", datetime(2024, 2, 25, 22, 26, 40, 123456, tzinfo=UTC)),
        ("1708900000123", "auto", None, datetime(2024, 2, 25, 22, 26, 40, 123000, tzinfo=UTC)),
        ("1708900000123456", "auto", None, datetime(2024, 2, 25, 22, 26, 40, 123456, tzinfo=UTC)),
        ("1708900000", "auto", None, T0),
        ("2024-02-25T22:26:40Z", "iso8601", None, T0),
        ("2024-02-25T23:26:40+01:00", "iso8601", None, T0),
        ("2024-02-25 22:26:40", "auto", None, T0),  # naive → UTC
        (
            "2024-02-25T22:26:40.5Z",
            "auto",
            None,
            datetime(2024, 2, 25, 22, 26, 40, 500000, tzinfo=UTC),
        ),
    ],
)
def test_timestamps_parse_as_unix_or_iso(
    cell: str, fmt: str, unit: str | None, expected: datetime
) -> None:
    micros, reasons = parse_timestamps(pd.Series([cell]), fmt, unit)

    assert reasons == [None]
    assert to_datetime(int(micros[0])) == expected


@pytest.mark.parametrize(
    ("cell", "fmt", "unit", "reason"),
    [
        ("", "auto", None, "timestamp is required"),
        (
            "yesterday",
            "auto",
            None,
            "timestamp 'yesterday' is not ISO 8601 (e.g. 2026-02-25T21:00:00Z) or epoch seconds",
        ),
        (
            "yesterday",
            "iso8601",
            None,
            "timestamp 'yesterday' is not ISO 8601 (e.g. 2026-02-25T21:00:00Z)",
        ),
        ("2024-02-25", "unix", None, "timestamp '2024-02-25' is not a number of epoch seconds"),
        (
            "1708900000123",
            "unix",
            "s",
            "timestamp 1708900000123 is outside the accepted range for epoch seconds (1900–2100) "
            "(set timestamp_unit to ms or us?)",
        ),
        (
            "1800-01-01T00:00:00Z",
            "iso8601",
            None,
            "timestamp '1800-01-01T00:00:00Z' is outside the accepted range 1900–2100",
        ),
    ],
)
def test_unusable_timestamps_have_a_reason(
    cell: str, fmt: str, unit: str | None, reason: str
) -> None:
    _, reasons = parse_timestamps(pd.Series([cell]), fmt, unit)

    assert reasons == [reason]


# -- conversion ----------------------------------------------------------------------------


def test_the_seed_example_becomes_three_streams_of_points(tmp_path: Path) -> None:
    points, errors, rows, rejected = convert_all(tmp_path, SEED_CSV)

    assert (errors, rows, rejected) == ([], 3, 0)
    expected = []
    for i, (t, h, p) in enumerate(
        [(23.5, 65.2, 1013.25), (23.6, 65.1, 1013.24), (23.7, 65.0, 1013.23)]
    ):
        ts = datetime.fromtimestamp(1708900000 + i, UTC)
        expected += [
            ("src", "temperature", t, ts),
            ("src", "humidity", h, ts),
            ("src", "pressure", p, ts),
        ]
    assert points == expected


def test_bad_rows_are_reported_with_their_line_and_reason_and_good_cells_kept(
    tmp_path: Path,
) -> None:
    text = (
        "timestamp,a,b\n"  # line 1
        "1708900000,1,2\n"  # 2
        "soon,3,4\n"  # 3: bad timestamp → both points rejected
        "1708900002,abc,5\n"  # 4: a not a number, b kept
        "1708900003,,6\n"  # 5: a empty
        "1708900004,1,2,3\n"  # 6: too many fields
        "\n"  # 7: blank line
        "1708900005,nan,inf\n"  # 8: not finite
        "1708900006,7,8\n"  # 9
    )
    points, errors, rows, rejected = convert_all(tmp_path, text, chunk_rows=3, slice_rows=2)

    assert [(p[1], p[2]) for p in points] == [
        ("a", 1.0),
        ("b", 2.0),
        ("b", 5.0),
        ("b", 6.0),
        ("a", 7.0),
        ("b", 8.0),
    ]
    assert errors == [
        RowError(
            3,
            "timestamp",
            "timestamp 'soon' is not ISO 8601 (e.g. 2026-02-25T21:00:00Z) or epoch seconds",
        ),
        RowError(4, "a", "a must be a number, got the text 'abc'"),
        RowError(5, "a", "a is required"),
        RowError(6, None, "expected 3 fields, saw 4"),
        RowError(7, "timestamp", "timestamp is required"),
        RowError(8, "a", "a must be a finite number, got 'nan'"),
        RowError(8, "b", "b must be a finite number, got 'inf'"),
    ]
    assert rows == 8
    assert rejected == 2 + 1 + 1 + 2 + 2 + 2


def test_a_bad_last_line_is_reported(tmp_path: Path) -> None:
    _, errors, rows, _ = convert_all(tmp_path, "timestamp,a\n1708900000,1\n1708900001,2,3\n")

    assert errors == [RowError(3, None, "expected 2 fields, saw 3")] and rows == 2


def test_semicolons_and_decimal_commas_latin1(tmp_path: Path) -> None:
    text = "timestamp;température\n2024-02-25T22:26:40Z;23,5\n".encode("latin-1")
    points, errors, _, _ = convert_all(tmp_path, text, decimal=",")

    assert errors == [] and points == [("src", "température", 23.5, T0)]


def test_long_format_takes_stream_and_source_from_each_row(tmp_path: Path) -> None:
    text = (
        "timestamp,stream_id,value,source_id\n"
        "1708900000,cpu,1.5,host-a\n"
        "1708900000,mem,2.5,host-b\n"
        "1708900001,,3,host-a\n"
        "1708900001,cpu,4,\n"
    )
    points, errors, _, rejected = convert_all(tmp_path, text, source_id="fallback")

    assert points == [
        ("host-a", "cpu", 1.5, T0),
        ("host-b", "mem", 2.5, T0),
        ("fallback", "cpu", 4.0, datetime.fromtimestamp(1708900001, UTC)),
    ]
    assert errors == [RowError(4, "stream_id", "stream_id is required")] and rejected == 1


def test_without_header_columns_are_numbered_or_named(tmp_path: Path) -> None:
    points, errors, _, _ = convert_all(
        tmp_path, "1708900000,1.5\n", header="false", columns="ts,temp", timestamp_column="ts"
    )

    assert errors == [] and points == [("src", "temp", 1.5, T0)]


def test_an_integer_beyond_2_53_is_refused_and_the_rest_of_its_column_kept(tmp_path: Path) -> None:
    text = "timestamp,stream_id,value\n1708900000,a,9007199254740993\n1708900000,b,2.5\n"
    points, errors, _, rejected = convert_all(tmp_path, text)

    assert points == [("src", "b", 2.5, T0)] and rejected == 1
    assert errors == [
        RowError(
            2,
            "value",
            "value 9007199254740993 is not exactly representable as a double-precision number "
            "(integers beyond 2^53 would be rounded); send it as a float",
        )
    ]


@pytest.mark.parametrize(
    ("field", "json_value", "cell"),
    [
        ("stream_id", "=cmd", "=cmd"),
        ("stream_id", "s" * 257, "s" * 257),
        ("value", "high", "high"),
        ("value", "NaN", "NaN"),
        ("value", "-Infinity", "-Infinity"),
        ("value", "1e400", "1e400"),
        ("value", 2**53 + 1, str(2**53 + 1)),
        ("timestamp", "yesterday", "yesterday"),
        ("timestamp", "2026-03-01", "2026-03-01"),
        ("timestamp", "2026-W09-1T10:00", "2026-W09-1T10:00"),
        ("timestamp", "2200-01-01T00:00:00Z", "2200-01-01T00:00:00Z"),
        ("timestamp", 4_200_000_000, "4200000000"),
        ("timestamp", -2_300_000_000, "-2300000000"),
    ],
)
def test_a_bad_cell_gets_the_reason_the_json_gateways_give(
    tmp_path: Path, field: str, json_value: object, cell: str
) -> None:
    raw = {"stream_id": "cpu", "value": 1.5, "timestamp": "2026-03-01T00:00:00Z"}
    rejection = normalize_point({**raw, field: json_value}, 0, T0)
    cells = {**raw, "value": "1.5", field: cell}
    text = "timestamp,stream_id,value\n" + ",".join(
        cells[k] for k in ("timestamp", "stream_id", "value")
    )

    _, errors, _, _ = convert_all(tmp_path, text + "\n")

    assert isinstance(rejection, Rejection)
    assert [e.reason for e in errors] == [rejection.reason]
