"""CSV text → points and per-row errors (no bus, no HTTP).

``detect_options`` resolves an upload's options (encoding, delimiter, wide/long format, value
columns) from the form fields and the head of the file; ``read_chunks`` reads the file with
pandas in chunks of ``chunk_rows`` rows (never the whole file); ``convert_chunk`` turns one chunk
into points per source and the errors of its bad rows.

Every cell is read as text and converted here, vectorised, so that an empty cell, ``nan`` and
``abc`` each get their own reason and a bad cell never changes how its column is read. A row's
``row`` number is its line number in the file (the header is line 1), which is what an editor
or spreadsheet shows.
"""

from __future__ import annotations

import csv
import io
import re
import warnings
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal

import numpy as np
import pandas as pd
from pydantic import BaseModel, ConfigDict, Field

from tributary_contracts import DataPoint
from tributary_ingest.points import (
    ISO_DATE_RE,
    ISO_DATETIME_RE,
    MAX_TIMESTAMP,
    MILLISECONDS_MAGNITUDE,
    MIN_TIMESTAMP,
    TIMESTAMP_EXAMPLE,
    Rejection,
    build_point,
    check_identifier,
    check_value,
    epoch_out_of_range,
    missing,
    parse_timestamp,
    value_text_problem,
)

_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
MIN_US = int((MIN_TIMESTAMP - _EPOCH) / timedelta(microseconds=1))
MAX_US = int((MAX_TIMESTAMP - _EPOCH) / timedelta(microseconds=1))
DELIMITERS = ",;\t|"
LONG_COLUMNS = ("stream_id", "value")
SOURCE_COLUMN = "source_id"
UNIT_FACTORS = {"s": 1_000_000.0, "ms": 1_000.0, "us": 1.0}
UNIT_NAMES = {"s": "seconds", "ms": "milliseconds", "us": "microseconds"}
_BAD_LINE = re.compile(r"Skipping line (\d+): (.*)")
SAMPLE_ROWS = 1_000
UNKNOWN_SOURCE = "-"
MAX_COLUMNS = 1_000
"""Most columns a file may have (a wide file's streams per row)."""
COMPRESSED = {
    b"\x1f\x8b": "gzip-compressed (gunzip it first)",
    b"PK\x03\x04": "a zip archive (unzip it first)",
    b"BZh": "bzip2-compressed (bunzip2 it first)",
    b"\xfd7zXZ\x00": "xz-compressed (unxz it first)",
    b"\x28\xb5\x2f\xfd": "zstd-compressed (unzstd it first)",
    b"7z\xbc\xaf\x27\x1c": "a 7-zip archive (extract it first)",
}
"""Magic bytes of compressed files, and what to tell their sender."""
"""Source id under which rows without one are reported on dp.rejected.csv."""


class CsvFormat(StrEnum):
    """How a file holds its points."""

    WIDE = "wide"
    """timestamp + one column per stream: one point per (row, value column)."""
    LONG = "long"
    """timestamp, stream_id, value[, source_id]: one point per row."""


class OptionsProblem(ValueError):
    """A form field or the file's header does not allow an import; names the field."""

    def __init__(self, field_name: str, message: str) -> None:
        super().__init__(message)
        self.field = field_name
        self.message = message


class CsvOptions(BaseModel):
    """How a job reads its file: everything resolved at upload, stored in the job."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    format: CsvFormat = Field(description="wide or long.")
    encoding: Literal["utf-8-sig", "latin-1"] = Field(description="Text encoding of the file.")
    delimiter: str = Field(min_length=1, max_length=1, description="Field separator.")
    decimal: Literal[".", ","] = Field(default=".", description="Decimal separator of values.")
    header: bool = Field(default=True, description="Whether line 1 holds the column names.")
    columns: list[str] = Field(description="Column names in file order.")
    timestamp_column: str = Field(description="Column holding each row's event time.")
    value_columns: list[str] = Field(
        default_factory=list, description="Wide format: the columns that become streams."
    )
    timestamp_format: Literal["unix", "iso8601", "auto"] = Field(default="auto")
    timestamp_unit: Literal["s", "ms", "us"] | None = Field(
        default=None, description="Unit of unix times; None: seconds, or by magnitude with auto."
    )
    has_source_column: bool = Field(
        default=False, description="Long format: the file has a source_id column."
    )


@dataclass(frozen=True)
class RowError:
    """One problem of one row (or cell)."""

    row: int
    column: str | None
    reason: str

    def to_json(self) -> dict[str, Any]:
        return {"row": self.row, "column": self.column, "reason": self.reason}


@dataclass
class SourcePoints:
    """The points of one source in a slice, as parallel lists: a ``DataPoint`` object per point
    cost more than everything else the importer does (measured: ~60 % of its CPU with the
    per-point ``isoformat`` of the message id), so points stay plain values until
    ``csv_importer.encode`` writes them as ``PointBatch`` JSON."""

    stream_ids: list[str] = field(default_factory=list)
    values: list[float] = field(default_factory=list)
    ts: list[str] = field(default_factory=list)
    """Event times as their JSON text: UTC ISO 8601 with ``Z`` (``timestamp_texts``)."""

    def add(self, stream_id: str, value: float, ts: str) -> None:
        self.stream_ids.append(stream_id)
        self.values.append(value)
        self.ts.append(ts)

    def __len__(self) -> int:
        return len(self.values)

    def data_points(self) -> list[DataPoint]:
        """As ``DataPoint``s (for tests and tools; the importer never builds them)."""
        return [
            _point(sid, value, datetime.fromisoformat(ts))
            for sid, value, ts in zip(self.stream_ids, self.values, self.ts, strict=True)
        ]


@dataclass
class ChunkResult:
    """What one chunk (or slice of it) became."""

    rows: int = 0
    points: dict[str, SourcePoints] = field(default_factory=dict)  # by source id
    errors: list[RowError] = field(default_factory=list)
    rejections: dict[str, list[Rejection]] = field(default_factory=dict)  # by source id
    points_rejected: int = 0
    last_line: int = 0


# -- options -------------------------------------------------------------------------------


def parse_column_list(text: str | None, field_name: str) -> list[str] | None:
    """``["a","b"]`` (JSON) or ``a,b`` → names; empty/absent → None."""
    if text is None or not text.strip():
        return None
    text = text.strip()
    if text.startswith("["):
        import orjson

        try:
            value = orjson.loads(text)
        except orjson.JSONDecodeError as exc:
            raise OptionsProblem(field_name, f"{field_name} is not a JSON list: {exc}") from None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise OptionsProblem(field_name, f"{field_name} must be a list of column names")
        names = [v.strip() for v in value]
    else:
        names = [v.strip() for v in text.split(",")]
    names = [n for n in names if n]
    if not names:
        return None
    if len(set(names)) != len(names):
        raise OptionsProblem(field_name, f"{field_name} names a column twice")
    return names


def choose_encoding(
    requested: str, head: bytes, utf8_valid: bool
) -> Literal["utf-8-sig", "latin-1"]:
    """``utf-8-sig`` (with or without BOM) or ``latin-1``; ``auto`` picks UTF-8 when the whole
    upload decoded as UTF-8 (checked while it was written to disk)."""
    name = requested.strip().lower().replace("_", "-")
    if name in ("utf-8", "utf8", "utf-8-sig"):
        return "utf-8-sig"
    if name in ("latin-1", "latin1", "iso-8859-1", "iso8859-1"):
        return "latin-1"
    if name != "auto":
        raise OptionsProblem(
            "encoding", f"encoding must be auto, utf-8 or latin-1, got {requested!r}"
        )
    if head.startswith(b"\xef\xbb\xbf") or utf8_valid:
        return "utf-8-sig"
    return "latin-1"


def sniff_delimiter(first_lines: str) -> str:
    """The most plausible separator among , ; tab | in the first lines."""
    try:
        return csv.Sniffer().sniff(first_lines, delimiters=DELIMITERS).delimiter
    except csv.Error:
        header = first_lines.splitlines()[0] if first_lines else ""
        counts = {d: header.count(d) for d in DELIMITERS}
        best = max(counts, key=lambda d: counts[d])
        return best if counts[best] else ","


def detect_options(fields: dict[str, str], head: bytes, utf8_valid: bool) -> CsvOptions:
    """Resolve the form ``fields`` against the first bytes of the file; ``OptionsProblem``
    names the field (or the file) that makes the import impossible."""
    for magic, what in COMPRESSED.items():
        if head.startswith(magic):
            raise OptionsProblem("file", f"the file is {what}, not CSV text")
    if b"\x00" in head:
        raise OptionsProblem(
            "file", "the file holds NUL bytes: binary data (or UTF-16 text), not CSV; send UTF-8"
        )
    encoding = choose_encoding(fields.get("encoding", "auto") or "auto", head, utf8_valid)
    text = head.decode(encoding, errors="replace").removeprefix("\ufeff")
    # The head may end inside a line: keep whole lines only (unless it is all there is).
    lines = text.splitlines()
    if len(lines) > 1 and not text.endswith(("\n", "\r")):
        lines = lines[:-1]
    if not lines or not lines[0].strip():
        raise OptionsProblem("file", "the file is empty (no header or data line)")

    delimiter = fields.get("delimiter", "") or "auto"
    if delimiter in ("\\t", "tab"):
        delimiter = "\t"
    if delimiter == "auto":
        delimiter = sniff_delimiter("\n".join(lines[:20]))
    elif len(delimiter) != 1:
        raise OptionsProblem(
            "delimiter", f"delimiter must be one character or auto, got {delimiter!r}"
        )
    decimal = fields.get("decimal", ".") or "."
    if decimal not in (".", ","):
        raise OptionsProblem("decimal", f"decimal must be '.' or ',', got {decimal!r}")
    if decimal == delimiter:
        raise OptionsProblem("decimal", "decimal separator and delimiter must differ")

    header_text = (fields.get("header", "true") or "true").strip().lower()
    if header_text not in ("true", "false", "1", "0", "yes", "no"):
        raise OptionsProblem("header", f"header must be true or false, got {header_text!r}")
    header = header_text in ("true", "1", "yes")

    first = next(csv.reader([lines[0]], delimiter=delimiter))
    if len(first) > MAX_COLUMNS:
        cut = "" if text.endswith(("\n", "\r")) or len(lines) > 1 else "at least "
        raise OptionsProblem(
            "file", f"line 1 has {cut}{len(first)} columns; at most {MAX_COLUMNS} are accepted"
        )
    given = parse_column_list(fields.get("columns"), "columns")
    if header:
        columns = [c.strip() for c in first]
    else:
        columns = given or [str(i + 1) for i in range(len(first))]
        if len(columns) != len(first):
            raise OptionsProblem(
                "columns",
                f"columns names {len(columns)} columns but line 1 has {len(first)} fields",
            )
    if len(set(columns)) != len(columns):
        dup = sorted({c for c in columns if columns.count(c) > 1})
        raise OptionsProblem("file", f"the header names column(s) {', '.join(dup)} twice")

    ts_column = (fields.get("timestamp_column") or "timestamp").strip()
    if ts_column not in columns:
        raise OptionsProblem(
            "timestamp_column",
            f"timestamp column {ts_column!r} is not in the file (columns: {', '.join(columns)})",
        )
    ts_format = (fields.get("timestamp_format") or "auto").strip().lower()
    if ts_format == "iso":
        ts_format = "iso8601"
    if ts_format not in ("unix", "iso8601", "auto"):
        raise OptionsProblem(
            "timestamp_format", f"timestamp_format must be unix, iso8601 or auto, got {ts_format!r}"
        )
    unit = (fields.get("timestamp_unit") or "").strip().lower() or None
    if unit is not None and unit not in UNIT_FACTORS:
        raise OptionsProblem("timestamp_unit", f"timestamp_unit must be s, ms or us, got {unit!r}")

    requested_format = (fields.get("format") or "auto").strip().lower()
    if requested_format not in ("auto", "wide", "long"):
        raise OptionsProblem(
            "format", f"format must be auto, wide or long, got {requested_format!r}"
        )
    is_long = all(c in columns for c in LONG_COLUMNS)
    fmt = (
        CsvFormat(requested_format)
        if requested_format != "auto"
        else (CsvFormat.LONG if is_long else CsvFormat.WIDE)
    )
    base = {
        "encoding": encoding,
        "delimiter": delimiter,
        "decimal": decimal,
        "header": header,
        "columns": columns,
        "timestamp_column": ts_column,
        "timestamp_format": ts_format,
        "timestamp_unit": unit,
    }
    if fmt is CsvFormat.LONG:
        missing = [c for c in LONG_COLUMNS if c not in columns]
        if missing:
            raise OptionsProblem(
                "format",
                f"long format needs column(s) {', '.join(missing)}; the file has "
                f"{', '.join(columns)}",
            )
        has_source = SOURCE_COLUMN in columns
        if not has_source and not fields.get("source_id"):
            raise OptionsProblem(
                "source_id", "source_id is required (the file has no source_id column)"
            )
        return CsvOptions.model_validate({**base, "format": fmt, "has_source_column": has_source})

    if not fields.get("source_id"):
        raise OptionsProblem("source_id", "source_id is required")
    value_columns = parse_column_list(fields.get("value_columns"), "value_columns")
    if value_columns is not None:
        unknown = [c for c in value_columns if c not in columns]
        if unknown:
            raise OptionsProblem(
                "value_columns",
                f"value column(s) {', '.join(unknown)} not in the file "
                f"(columns: {', '.join(columns)})",
            )
        if ts_column in value_columns:
            raise OptionsProblem(
                "value_columns", "value_columns must not hold the timestamp column"
            )
    else:
        value_columns = numeric_columns(
            "\n".join(lines), columns, ts_column, delimiter, decimal, header
        )
        if not value_columns:
            raise OptionsProblem(
                "value_columns", "no numeric column found besides the timestamp; name value_columns"
            )
    for name in value_columns:
        problem = check_identifier(name, "value column name")
        if problem:
            raise OptionsProblem("value_columns", problem)
    return CsvOptions.model_validate({**base, "format": fmt, "value_columns": value_columns})


def numeric_columns(
    text: str, columns: list[str], ts_column: str, delimiter: str, decimal: str, header: bool
) -> list[str]:
    """Columns (other than the timestamp) where most non-empty cells of the sample are numbers."""
    frame = pd.read_csv(
        io.StringIO(text),
        sep=delimiter,
        header=0 if header else None,
        names=columns,
        dtype=str,
        keep_default_na=False,
        na_filter=False,
        nrows=SAMPLE_ROWS,
        on_bad_lines="skip",
        engine="python" if len(delimiter) != 1 else "c",
    )
    chosen = []
    for name in columns:
        if name == ts_column:
            continue
        cells = frame[name].astype(str).str.strip()
        cells = cells[cells != ""]
        if cells.empty:
            continue
        numbers, _ = parse_numbers(cells, decimal)
        if np.isfinite(numbers).sum() * 2 > len(cells):
            chosen.append(name)
    return chosen


# -- reading -------------------------------------------------------------------------------


class BadLines:
    """Lines pandas skipped (too many fields), from its ParserWarnings: line → reason."""

    def __init__(self) -> None:
        self.lines: dict[int, str] = {}

    def collect(self, caught: list[warnings.WarningMessage]) -> None:
        for warning in caught:
            for match in _BAD_LINE.finditer(str(warning.message)):
                self.lines[int(match.group(1))] = match.group(2).strip()

    def sorted_lines(self) -> list[int]:
        return sorted(self.lines)


def read_chunks(
    path: Path, options: CsvOptions, chunk_rows: int, bad_lines: BadLines
) -> Iterator[pd.DataFrame]:
    """The file's rows as DataFrames of text cells, ``chunk_rows`` at a time."""
    reader = pd.read_csv(
        path,
        sep=options.delimiter,
        header=0 if options.header else None,
        names=options.columns,
        dtype=str,
        encoding=options.encoding,
        keep_default_na=False,
        na_filter=False,
        skip_blank_lines=False,  # a blank line is a row with empty cells: reported, not hidden
        on_bad_lines="warn",
        chunksize=chunk_rows,
        engine="c",
    )
    with reader:
        while True:
            with warnings.catch_warnings(record=True) as caught:
                warnings.simplefilter("always")
                try:
                    frame = next(reader)
                except StopIteration:
                    bad_lines.collect(caught)
                    return
            bad_lines.collect(caught)
            yield frame


def line_numbers(index: np.ndarray, header: bool, skipped: list[int]) -> np.ndarray:
    """File line numbers of the rows at positions ``index`` (0-based, skipped lines not
    counted), given the sorted line numbers pandas skipped."""
    lines = index.astype(np.int64) + (2 if header else 1)
    for line in skipped:  # ascending: each skipped line pushes every later row down by one
        lines[lines >= line] += 1
    return lines


# -- conversion ----------------------------------------------------------------------------


def parse_numbers(cells: pd.Series, decimal: str) -> tuple[np.ndarray, np.ndarray]:
    """``(values, text)`` of text cells: float64 values (NaN where not a number)."""
    text = cells.astype(str).str.strip()
    if decimal == ",":
        text = text.str.replace(",", ".", regex=False)
    values = pd.to_numeric(text, errors="coerce").to_numpy(
        dtype=np.float64, na_value=np.nan, copy=True  # written below: never a read-only view
    )
    # The point policy: an integer a double cannot hold exactly is refused, not rounded.
    for i in np.flatnonzero(text.str.fullmatch(LONG_INTEGER).to_numpy(dtype=bool)):
        if isinstance(check_value(int(text.iat[i])), str):
            values[i] = np.nan
    return values, text.to_numpy(dtype=object)


LONG_INTEGER = r"[+-]?\d{16,}"


def value_reason(column: str, text: str) -> str:
    """Why the cell ``text`` of ``column`` is not a finite number (the shared rules)."""
    if not text:
        return missing(column)
    if re.fullmatch(LONG_INTEGER, text):
        reason = check_value(int(text), column)
        if isinstance(reason, str):
            return reason
    return value_text_problem(text, column)


def parse_timestamps(
    cells: pd.Series, fmt: str, unit: str | None
) -> tuple[np.ndarray, list[str | None]]:
    """Event times of text cells as int64 microseconds since the epoch, and per cell the
    reason it is unusable (None when fine).

    The shared point rules decide (``tributary_ingest.points``): pandas converts the cells in
    bulk, and every cell it does not accept is asked of ``parse_timestamp`` (which accepts or
    words the reason), so the rules cost nothing per good cell."""
    text = cells.astype(str).str.strip()
    n = len(text)
    micros = np.zeros(n, dtype=np.int64)
    ok = np.zeros(n, dtype=bool)
    reasons: list[str | None] = [None] * n
    empty = (text == "").to_numpy()

    numeric = np.zeros(n, dtype=bool)
    if fmt in ("unix", "auto"):
        numbers = pd.to_numeric(text, errors="coerce").to_numpy(dtype=np.float64, na_value=np.nan)
        numeric = np.isfinite(numbers)
        if unit is not None or fmt == "unix":
            factors = np.full(n, UNIT_FACTORS[unit or "s"])
        else:  # auto unit by magnitude: 1.7e9 s, 1.7e12 ms, 1.7e15 us (today)
            magnitude = np.abs(np.where(numeric, numbers, 0.0))
            factors = np.where(
                magnitude >= 1e14, 1.0, np.where(magnitude >= MILLISECONDS_MAGNITUDE, 1e3, 1e6)
            )
        with np.errstate(invalid="ignore", over="ignore"):
            scaled = np.round(np.where(numeric, numbers, 0.0) * factors)
        in_range = numeric & (scaled >= MIN_US) & (scaled < MAX_US)
        micros[in_range] = scaled[in_range].astype(np.int64)
        ok |= in_range
        chosen = unit is not None or fmt == "unix"  # else the magnitude chose the unit
        for i in np.flatnonzero(numeric & ~in_range):
            unit_name = unit or {1.0: "us", 1e3: "ms"}.get(factors[i], "s")
            hint = ""
            if chosen and unit_name != "us" and scaled[i] >= MAX_US:
                hint = " (set timestamp_unit to ms or us?)"
            reasons[i] = epoch_out_of_range(text.iat[i], UNIT_NAMES[unit_name], hint)
    if fmt in ("iso8601", "auto"):
        todo = ~numeric & ~empty
        iso = text.str.match(ISO_DATETIME_RE.pattern).to_numpy(dtype=bool) & todo
        if iso.any():
            parsed = pd.to_datetime(text[iso], format="ISO8601", utc=True, errors="coerce")
            good = parsed.notna().to_numpy()
            values = parsed[parsed.notna()].dt.as_unit("us").astype("int64").to_numpy()
            positions = np.flatnonzero(iso)[good]
            in_range = (values >= MIN_US) & (values < MAX_US)
            micros[positions[in_range]] = values[in_range]
            ok[positions[in_range]] = True
        for i in np.flatnonzero(todo & ~ok):
            cell = text.iat[i]
            if fmt == "iso8601" and not ISO_DATE_RE.match(cell):
                reasons[i] = f"timestamp {cell[:64]!r} is not ISO 8601 (e.g. {TIMESTAMP_EXAMPLE})"
                continue
            stamp = parse_timestamp(cell)
            if isinstance(stamp, str):
                reasons[i] = stamp
            else:
                micros[i] = (stamp - _EPOCH) // timedelta(microseconds=1)
                ok[i] = True
    for i in np.flatnonzero(~ok):
        if empty[i]:
            reasons[i] = missing("timestamp")
        elif reasons[i] is None:  # unix: a cell that is no number
            reasons[i] = (
                f"timestamp {text.iat[i][:64]!r} is not a number of epoch "
                f"{UNIT_NAMES[unit or 's']}"
            )
    return micros, reasons


def to_datetime(micros: int) -> datetime:
    """UTC datetime of microseconds since the epoch (exact, no float rounding)."""
    return _EPOCH + timedelta(microseconds=micros)


def timestamp_texts(micros: np.ndarray) -> list[str]:
    """Microseconds since the epoch → their JSON text as pydantic writes a UTC datetime
    (``2026-03-01T00:00:00Z``, ``…00.000500Z``), vectorised."""
    texts = np.datetime_as_string(micros.astype("datetime64[us]"), unit="us").tolist()
    whole = (micros % 1_000_000 == 0).tolist()
    return [t[:-7] + "Z" if w else t + "Z" for t, w in zip(texts, whole, strict=True)]


def _point(stream_id: str, value: float, ts: datetime) -> DataPoint:
    return build_point(
        {
            "stream_id": stream_id,
            "value": value,
            "ts": ts,
            "stream_type": None,
            "sequence": None,
            "metadata": {},
            "legacy": None,
        }
    )


def _rejection(row: int, column: str | None, reason: str, cells: dict[str, Any]) -> Rejection:
    code = "timestamp" if column is not None and reason.startswith("timestamp") else "value"
    if column is None:
        code = "row"
    return Rejection(row, column, f"row {row}: {reason}", code, cells)


def convert_chunk(
    frame: pd.DataFrame,
    options: CsvOptions,
    source_id: str | None,
    bad_lines: BadLines,
    first_line: int,
    slice_rows: int,
) -> Iterator[ChunkResult]:
    """The chunk ``frame`` as points by source and per-row errors, ``slice_rows`` rows at a
    time. Lines pandas skipped (wrong field count) between ``first_line`` and the chunk's last
    row are reported in the slice where they fall."""
    skipped = bad_lines.sorted_lines()
    lines = line_numbers(frame.index.to_numpy(), options.header, skipped)
    micros, ts_reasons = parse_timestamps(
        frame[options.timestamp_column], options.timestamp_format, options.timestamp_unit
    )
    if options.format is CsvFormat.WIDE:
        columns = [
            (name, *parse_numbers(frame[name], options.decimal)) for name in options.value_columns
        ]
    else:
        columns = [("value", *parse_numbers(frame["value"], options.decimal))]
        stream_ids = frame["stream_id"].astype(str).str.strip().to_numpy(dtype=object)
        sources = (
            frame[SOURCE_COLUMN].astype(str).str.strip().to_numpy(dtype=object)
            if options.has_source_column
            else None
        )
    n = len(frame)
    last_line_of_chunk = int(lines[-1]) if n else first_line
    bad_in_chunk = [line for line in skipped if first_line <= line <= last_line_of_chunk]
    values = [(name, v.tolist(), t) for name, v, t in columns]
    ts_texts = timestamp_texts(micros)
    lines_list = lines.tolist()
    wide = None
    if options.format is CsvFormat.WIDE and n:
        # Points of the good cells, row-major, with numpy (no Python loop per point).
        ts_ok = np.array([reason is None for reason in ts_reasons], dtype=bool)
        matrix = np.column_stack([v for _, v, _ in columns])
        finite = np.isfinite(matrix)
        wide = (
            matrix,
            finite & ts_ok[:, None],
            ts_ok,
            np.array(options.value_columns, dtype=object),
            np.array(ts_texts, dtype=object),
        )
    for start in range(0, max(n, 1), slice_rows):
        stop = min(start + slice_rows, n)
        result = ChunkResult(rows=stop - start)
        if n == 0:
            result.rows = 0
        low = lines_list[start] if stop > start else first_line
        high = lines_list[stop - 1] if stop > start else last_line_of_chunk
        if start == 0:
            low = first_line
        if stop == n:
            high = last_line_of_chunk
        bad_here = [line for line in bad_in_chunk if low <= line <= high]
        result.last_line = high
        events: list[tuple[int, RowError]] = [
            (line, RowError(line, None, bad_lines.lines[line])) for line in bad_here
        ]
        result.rows += len(bad_here)
        width = len(options.value_columns) if options.format is CsvFormat.WIDE else 1
        result.points_rejected += len(bad_here) * width
        for line in bad_here:
            result.rejections.setdefault(source_id or UNKNOWN_SOURCE, []).append(
                _rejection(line, None, bad_lines.lines[line], {})
            )
        if wide is not None:
            _wide_slice(
                result,
                events,
                wide,
                start,
                stop,
                source_id or "",
                lines_list,
                ts_reasons,
                values,
                options.timestamp_column,
                frame,
            )
            events.sort(key=lambda e: e[0])
            result.errors = [e for _, e in events]
            yield result
            continue
        for i in range(start, stop):
            row = lines_list[i]
            reason = ts_reasons[i]
            if options.format is CsvFormat.WIDE:
                src = source_id or ""
            else:
                src = (sources[i] if sources is not None else "") or (source_id or "")
            if reason is not None:
                events.append((row, RowError(row, options.timestamp_column, reason)))
                result.points_rejected += width
                result.rejections.setdefault(src or UNKNOWN_SOURCE, []).append(
                    _rejection(row, options.timestamp_column, reason, _cells(frame, i))
                )
                continue
            ts = ts_texts[i]
            if options.format is CsvFormat.WIDE:
                out = result.points.get(src)
                if out is None:
                    out = result.points[src] = SourcePoints()
                for name, nums, texts in values:
                    value = nums[i]
                    if value == value and value not in (_INF, _NINF):
                        out.add(name, value, ts)
                        continue
                    reason = value_reason(name, texts[i])
                    events.append((row, RowError(row, name, reason)))
                    result.points_rejected += 1
                    result.rejections.setdefault(src, []).append(
                        _rejection(row, name, reason, _cells(frame, i))
                    )
                continue
            # long format: one point per row
            why = None
            column = None
            stream_id = stream_ids[i]
            if not src:
                why, column = missing(SOURCE_COLUMN), SOURCE_COLUMN
            elif (problem := check_identifier(src, "source_id")) is not None:
                why, column = problem, SOURCE_COLUMN
            elif not stream_id:
                why, column = missing("stream_id"), "stream_id"
            elif (problem := check_identifier(stream_id, "stream_id")) is not None:
                why, column = problem, "stream_id"
            else:
                _, nums, texts = values[0]
                value = nums[i]
                if not (value == value and value not in (_INF, _NINF)):
                    why = value_reason("value", texts[i])
                    column = "value"
            if why is not None:
                events.append((row, RowError(row, column, why)))
                result.points_rejected += 1
                result.rejections.setdefault(src or UNKNOWN_SOURCE, []).append(
                    _rejection(row, column, why, _cells(frame, i))
                )
                continue
            result.points.setdefault(src, SourcePoints()).add(stream_id, nums[i], ts)
        events.sort(key=lambda e: e[0])
        result.errors = [e for _, e in events]
        yield result
        if n == 0:
            return


def _wide_slice(
    result: ChunkResult,
    events: list[tuple[int, RowError]],
    wide: tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray, np.ndarray],
    start: int,
    stop: int,
    src: str,
    lines_list: list[int],
    ts_reasons: list[str | None],
    values: list[tuple[str, list[float], np.ndarray]],
    ts_column: str,
    frame: pd.DataFrame,
) -> None:
    """Wide format, rows ``start:stop``: the good cells' points (row-major, as the per-row
    loop made them), then an error per bad timestamp (whole row) or bad cell, in row order."""
    matrix, good, ts_ok, names, ts_texts = wide
    width = len(names)
    rows = stop - start
    keep = good[start:stop].ravel()
    if keep.any():
        result.points[src] = SourcePoints(
            np.tile(names, rows)[keep].tolist(),
            matrix[start:stop].ravel()[keep].tolist(),
            np.repeat(ts_texts[start:stop], width)[keep].tolist(),
        )
    if keep.all():
        return
    bad: list[tuple[int, int]] = [(int(i), -1) for i in np.flatnonzero(~ts_ok[start:stop])]
    bad += [(int(i), int(j)) for i, j in np.argwhere(~good[start:stop] & ts_ok[start:stop, None])]
    bad.sort()
    for offset, j in bad:
        i = start + offset
        row = lines_list[i]
        if j < 0:
            reason = ts_reasons[i]
            assert reason is not None
            events.append((row, RowError(row, ts_column, reason)))
            result.points_rejected += width
            result.rejections.setdefault(src or UNKNOWN_SOURCE, []).append(
                _rejection(row, ts_column, reason, _cells(frame, i))
            )
            continue
        name, _, texts = values[j]
        why = value_reason(name, texts[i])
        events.append((row, RowError(row, name, why)))
        result.points_rejected += 1
        result.rejections.setdefault(src, []).append(_rejection(row, name, why, _cells(frame, i)))


def leftover_bad_lines(
    bad_lines: BadLines, after_line: int, options: CsvOptions, source_id: str | None
) -> ChunkResult:
    """Skipped lines after the last row read (the file's last lines had wrong field counts)."""
    result = ChunkResult(last_line=after_line)
    width = len(options.value_columns) if options.format is CsvFormat.WIDE else 1
    for line in bad_lines.sorted_lines():
        if line > after_line:
            reason = bad_lines.lines[line]
            result.rows += 1
            result.points_rejected += width
            result.errors.append(RowError(line, None, reason))
            result.rejections.setdefault(source_id or UNKNOWN_SOURCE, []).append(
                _rejection(line, None, reason, {})
            )
            result.last_line = line
    return result


_INF = float("inf")
_NINF = float("-inf")


def _cells(frame: pd.DataFrame, i: int) -> dict[str, Any]:
    return {str(k): v for k, v in frame.iloc[i].items()}
