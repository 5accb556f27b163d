"""The legacy per-sensor thresholds (``dbo.alert_thresholds``, ``dbo.delta_thresholds``) as
stream configurations, so every imported sensor is classified exactly as the legacy
``ReadingClassifier`` classified it (seed 002, "Clasificación IoT"):

- a value outside the sensor's ``alert_thresholds`` range (below its minimum, above its maximum)
  is an ALERT → ``value_constraints.min_value``/``max_value`` (physical range → ``critical``);
- a change from the sensor's previous reading above its ``delta_thresholds`` limit (absolute, or
  relative in % of the previous value) is a WARNING (delta spike) →
  ``rate_constraints.abs_delta``/``rel_delta`` with severity ``anomaly``;
- anything else is clean (ML_PREDICTION → ``normal``); the range is checked first.

Each config is stored at scope ``iot/*/<sensor_id>`` (every source: the sensor id is unique in
the legacy database), with ``consecutive_violations_required`` 1 and ``cooldown_seconds`` 0 as the
shipped ``iot.*`` defaults (one alert per violation, as the legacy procedure). ``stream_type`` is
``iot.<sensor_type>`` when the device registry knows the sensor. A sensor with a row in only one
table gets only that part: the legacy classifier had no range (or no delta limit) for it either.

Rows are read from the SQL Server (``tributary thresholds import --mssql-dsn …``) or from CSV
exports of the two tables. Column names a legacy database may use for each field are listed in
``ALERT_COLUMNS``/``DELTA_COLUMNS`` (first present wins);
``deploy/sqlserver/003_legacy_thresholds.sql`` is the layout the SQL reader expects. Inactive
rows (``is_active`` 0) are skipped.
"""

from __future__ import annotations

import csv
import io
import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import ValidationError

from tributary_contracts import RateConstraints, StreamConfig, ValueConstraints
from tributary_contracts.stream_config import Severity
from tributary_runtime.devices import MAX_SENSOR_ID, stream_type_of
from tributary_runtime.stream_configs import StreamConfigBucket, StreamScope

IOT_DOMAIN = "iot"
ALERT_COLUMNS = {
    "sensor_id": ("sensor_id",),
    "min": ("min_value", "threshold_min", "threshold_value_min", "min_threshold", "lower_limit"),
    "max": ("max_value", "threshold_max", "threshold_value_max", "max_threshold", "upper_limit"),
    "active": ("is_active", "enabled", "active"),
}
DELTA_COLUMNS = {
    "sensor_id": ("sensor_id",),
    "abs": ("abs_delta", "max_abs_delta", "delta_abs", "abs_threshold", "max_delta"),
    "rel": ("rel_delta", "max_rel_delta", "delta_rel", "rel_threshold", "max_delta_percent"),
    "active": ("is_active", "enabled", "active"),
}
_TRUE = {"1", "true", "t", "yes", "y"}
_FALSE = {"0", "false", "f", "no", "n"}


@dataclass
class SensorThresholds:
    """What the two tables say about one sensor."""

    sensor_id: int
    min_value: float | None = None
    max_value: float | None = None
    abs_delta: float | None = None
    rel_delta: float | None = None
    has_alert: bool = False
    has_delta: bool = False


@dataclass
class ImportReport:
    """What an import did, per sensor: created, updated, unchanged, or skipped with a reason."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (what, why)

    def lines(self) -> list[str]:
        out = [f"created   {s}" for s in self.created]
        out += [f"updated   {s}" for s in self.updated]
        out += [f"unchanged {s}" for s in self.unchanged]
        out += [f"skipped   {s}: {why}" for s, why in self.skipped]
        out.append(
            f"{len(self.created)} created, {len(self.updated)} updated, "
            f"{len(self.unchanged)} unchanged, {len(self.skipped)} skipped"
        )
        return out


def _column(row: Mapping[str, Any], names: tuple[str, ...]) -> Any:
    for name in names:
        if name in row and row[name] not in (None, ""):
            return row[name]
    return None


def _number(value: Any, what: str) -> float | None:
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} {str(value)[:32]!r} is not a number") from None
    if not math.isfinite(number):
        raise ValueError(f"{what} {value!r} is not a finite number")
    return number


def _active(value: Any) -> bool:
    if value is None:
        return True
    text = str(value).strip().lower()
    if text not in _TRUE | _FALSE:
        raise ValueError(f"is_active {text[:16]!r} is not a boolean")
    return text in _TRUE


def _sensor(value: Any) -> int:
    text = str(value).strip() if value is not None else ""
    if not text.isdigit() or int(text) > MAX_SENSOR_ID:
        raise ValueError(f"sensor_id {text[:32]!r} is not a non-negative integer")
    return int(text)


def _lower(row: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k).strip().lower(): v for k, v in row.items()}


def merge_rows(
    alert_rows: Iterable[Mapping[str, Any]], delta_rows: Iterable[Mapping[str, Any]]
) -> tuple[dict[int, SensorThresholds], list[tuple[str, str]]]:
    """Per sensor, what its active rows say; and the rows skipped with why (inactive,
    unreadable, or a second active row for the same sensor that disagrees with the first)."""
    sensors: dict[int, SensorThresholds] = {}
    skipped: list[tuple[str, str]] = []
    for table, rows, columns in (
        ("alert_thresholds", alert_rows, ALERT_COLUMNS),
        ("delta_thresholds", delta_rows, DELTA_COLUMNS),
    ):
        for number, raw in enumerate(rows, start=1):
            row = _lower(raw)
            label = f"{table} row {number}"
            try:
                sensor_id = _sensor(_column(row, columns["sensor_id"]))
                label = f"{table} row {number} (sensor {sensor_id})"
                if not _active(_column(row, columns["active"])):
                    skipped.append((label, "inactive"))
                    continue
                if table == "alert_thresholds":
                    low = _number(_column(row, columns["min"]), "minimum")
                    high = _number(_column(row, columns["max"]), "maximum")
                    if low is None and high is None:
                        raise ValueError("neither a minimum nor a maximum")
                    if low is not None and high is not None and low > high:
                        raise ValueError(f"minimum {low} is above maximum {high}")
                    values: tuple[float | None, float | None] = (low, high)
                else:
                    absolute = _number(_column(row, columns["abs"]), "abs_delta")
                    relative = _number(_column(row, columns["rel"]), "rel_delta")
                    if absolute is None and relative is None:
                        raise ValueError("neither an absolute nor a relative delta")
                    for name, limit in (("abs_delta", absolute), ("rel_delta", relative)):
                        if limit is not None and limit <= 0:
                            raise ValueError(f"{name} {limit} must be above 0")
                    values = (absolute, relative)
            except ValueError as exc:
                skipped.append((label, str(exc)))
                continue
            entry = sensors.setdefault(sensor_id, SensorThresholds(sensor_id))
            if table == "alert_thresholds":
                if entry.has_alert and (entry.min_value, entry.max_value) != values:
                    skipped.append((label, "a second active alert threshold that differs"))
                    continue
                entry.min_value, entry.max_value, entry.has_alert = values[0], values[1], True
            else:
                if entry.has_delta and (entry.abs_delta, entry.rel_delta) != values:
                    skipped.append((label, "a second active delta threshold that differs"))
                    continue
                entry.abs_delta, entry.rel_delta, entry.has_delta = values[0], values[1], True
    return sensors, skipped


def stream_config_of(thresholds: SensorThresholds, sensor_type: str | None) -> StreamConfig:
    """The config that classifies like the legacy rules (module docstring)."""
    rate = None
    if thresholds.has_delta:
        rate = RateConstraints(
            abs_delta=thresholds.abs_delta,
            rel_delta=thresholds.rel_delta,
            severity=Severity.ANOMALY,
        )
    return StreamConfig(
        stream_type=stream_type_of(sensor_type),
        value_constraints=ValueConstraints(
            min_value=thresholds.min_value, max_value=thresholds.max_value
        ),
        rate_constraints=rate,
        consecutive_violations_required=1,
        cooldown_seconds=0,
    )


def read_csv(text: str) -> list[dict[str, str]]:
    """Rows of a CSV export with a header row (``bcp``/SSMS/``sqlcmd -s,`` exports)."""
    return list(csv.DictReader(io.StringIO(text.lstrip("\ufeff"))))


ALERT_SQL = "SELECT * FROM dbo.alert_thresholds"
DELTA_SQL = "SELECT * FROM dbo.delta_thresholds"


def read_sqlserver(dsn: str, odbc_driver: str, tds_version: str) -> tuple[list[Any], list[Any]]:
    """Every row of both tables (blocking: run it in a thread)."""
    from sqlalchemy import text  # the SQL Server stack is only needed for this source

    from tributary_sqlserver import build_engine

    engine = build_engine(dsn, odbc_driver=odbc_driver, tds_version=tds_version, pool_size=1)
    try:
        with engine.connect() as conn:
            alerts = [dict(r._mapping) for r in conn.execute(text(ALERT_SQL))]
            deltas = [dict(r._mapping) for r in conn.execute(text(DELTA_SQL))]
    finally:
        engine.dispose()
    return alerts, deltas


async def import_thresholds(
    bucket: StreamConfigBucket,
    sensors: dict[int, SensorThresholds],
    sensor_types: Mapping[int, str | None],
    *,
    replace: bool = False,
    dry_run: bool = False,
) -> ImportReport:
    """Store one config per sensor at ``iot/*/<sensor_id>``. An existing, different config is
    kept (skipped, named) unless ``replace``; an identical one is ``unchanged``."""
    report = ImportReport()
    for sensor_id in sorted(sensors):
        scope = StreamScope(IOT_DOMAIN, "*", str(sensor_id))
        try:
            config = stream_config_of(sensors[sensor_id], sensor_types.get(sensor_id))
        except ValidationError as exc:
            report.skipped.append((str(scope), exc.errors()[0]["msg"]))
            continue
        what = f"{scope} ({describe(config)})"
        current = await bucket.get(scope)
        if (
            current is not None
            and current.config is not None
            and (current.config.model_dump() == config.model_dump())
        ):
            report.unchanged.append(what)
            continue
        if current is not None and not replace:
            report.skipped.append(
                (
                    what,
                    f"a different config is stored (version {current.version}); "
                    "--replace overwrites it",
                )
            )
            continue
        if not dry_run:
            await bucket.put(scope, config)
        (report.updated if current is not None else report.created).append(what)
    return report


def describe(config: StreamConfig) -> str:
    v, r = config.value_constraints, config.rate_constraints
    parts = [f"range {_bound(v.min_value)}..{_bound(v.max_value)}"]
    if r is not None:
        if r.abs_delta is not None:
            parts.append(f"delta > {r.abs_delta:g}")
        if r.rel_delta is not None:
            parts.append(f"delta > {r.rel_delta:g} %")
    if config.stream_type:
        parts.append(config.stream_type)
    return ", ".join(parts)


def _bound(value: float | None) -> str:
    return "" if value is None else f"{value:g}"
