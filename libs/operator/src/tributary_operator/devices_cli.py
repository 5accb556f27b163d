"""``tributary devices …``: the IoT device registry (``iot-devices`` bucket) from a shell.

    tributary devices add [--uuid U] [--serial S] [--sensor ID:TYPE[:UUID]]…
                                         register a device; its key is printed once (last line)
    tributary devices list [--json]      one line per device: uuid, serial, state, sensors
    tributary devices disable UUID       its packets get 401 from now on (within the gateways'
    tributary devices enable UUID        registry cache time, DEVICE_CACHE_SECONDS)
    tributary devices import FILE…       devices and sensors from an export of the legacy
                                         ``devices``/``sensors`` tables (CSV or JSON)

Import files: JSON ``{"devices": [...], "sensors": [...]}`` or a JSON list / CSV of one table (a
table with a ``sensor_type`` or ``sensor_uuid`` column is the sensors table). Columns, with the
legacy names accepted: devices ``device_uuid|uuid``, ``serial|serial_number``,
``device_key_sha256|device_key_hash`` (hex SHA-256) or ``device_key`` (clear, hashed here),
``enabled|is_active|active``, ``id|device_id`` (legacy integer id); sensors ``sensor_id|id``,
``sensor_uuid|uuid``, ``sensor_type|type``, and ``device_uuid`` or ``device_id`` (the device's
legacy integer id). Every row is checked before anything is written; a device without a key in
the export gets a new one, printed once as ``<device_uuid><TAB><key>``. Sensors of a device
already registered are merged by sensor_id. Exit codes: 0 done, 1 not found or bus unreachable,
2 invalid input (nothing was written).
"""

from __future__ import annotations

import argparse
import asyncio
import csv
import io
import json
import re
import sys
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TextIO

import nats.errors

from tributary_contracts import DEVICES_BUCKET, ensure_jetstream
from tributary_runtime.bus import connect_nats
from tributary_runtime.devices import (
    MAX_SENSOR_ID,
    DeviceRecord,
    DeviceRegistry,
    SensorRecord,
    canonical_uuid,
    hash_device_key,
    make_device_key,
)
from tributary_runtime.settings import ServiceSettings

NOT_FOUND = 1
INVALID = 2
_SHA256 = re.compile(r"^[0-9a-f]{64}$")
_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}


class DevicesProblem(ValueError):
    """Input the registry cannot take; ``problems`` name the file, row and field."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("; ".join(problems))
        self.problems = problems


def add_parser(commands: Any) -> None:
    """Add ``devices`` and its subcommands to the ``tributary`` parser."""
    devices = commands.add_parser(
        "devices",
        help="manage the IoT device registry",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    sub = devices.add_subparsers(dest="devices_command", required=True)
    add = sub.add_parser("add", help="register a device and print its key once (last line)")
    add.add_argument("--uuid", help="device uuid (default: a new random one)")
    add.add_argument("--serial", default="", help="serial number")
    add.add_argument(
        "--sensor",
        action="append",
        default=[],
        metavar="ID:TYPE[:UUID]",
        help="a sensor: legacy integer id, sensor type, uuid (default: a new one); repeatable",
    )
    lister = sub.add_parser("list", help="list registered devices")
    lister.add_argument("--json", action="store_true", help="JSON instead of one line per device")
    for name, text in (("disable", "refuse the device's packets (401)"), ("enable", "accept them")):
        sub.add_parser(name, help=text).add_argument("uuid", help="device uuid")
    importer = sub.add_parser("import", help="import an export of the legacy tables")
    importer.add_argument("files", nargs="+", help="CSV or JSON files ('-': JSON on stdin)")


# -- parsing (no bus) -------------------------------------------------------------------------
def parse_sensor_spec(spec: str) -> SensorRecord:
    """``ID:TYPE[:UUID]`` → a sensor (``DevicesProblem`` naming what is wrong)."""
    parts = spec.split(":")
    if len(parts) not in (2, 3) or not parts[1].strip():
        raise DevicesProblem([f"--sensor {spec!r} must look like ID:TYPE or ID:TYPE:UUID"])
    sensor_id = _sensor_id(parts[0], f"--sensor {spec!r}")
    sensor_uuid = _uuid(parts[2], f"--sensor {spec!r}") if len(parts) == 3 else str(uuid.uuid4())
    return SensorRecord(sensor_uuid=sensor_uuid, sensor_id=sensor_id, sensor_type=parts[1].strip())


def _sensor_id(value: Any, where: str) -> int:
    text = str(value).strip()
    if isinstance(value, bool) or not text.isdigit() or int(text) > MAX_SENSOR_ID:
        raise DevicesProblem([f"{where}: sensor id {text[:32]!r} is not a non-negative integer"])
    return int(text)


def _uuid(value: Any, where: str) -> str:
    try:
        return canonical_uuid(value)
    except ValueError as exc:
        raise DevicesProblem([f"{where}: {exc}"]) from None


@dataclass
class ImportPlan:
    """What an import will write: devices by uuid (key hash None = keep/generate)."""

    devices: dict[str, DeviceRecord] = field(default_factory=dict)
    has_key: set[str] = field(default_factory=set)
    has_enabled: set[str] = field(default_factory=set)
    sensors: dict[str, list[SensorRecord]] = field(default_factory=dict)

    @property
    def sensor_count(self) -> int:
        return sum(len(s) for s in self.sensors.values())


def _pick(row: dict[str, Any], *names: str) -> Any:
    for name in names:
        value = row.get(name)
        if value is not None and value != "":
            return value
    return None


def _bool(value: Any, where: str) -> bool:
    if isinstance(value, bool):
        return value
    text = str(value).strip().lower()
    if text in _TRUE:
        return True
    if text in _FALSE:
        return False
    raise DevicesProblem([f"{where}: enabled {text[:16]!r} is not a boolean (true/false/1/0)"])


def load_tables(path: str) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """``(device rows, sensor rows)`` of one export file (each row tagged with ``_where``)."""
    name = "stdin" if path == "-" else Path(path).name
    text = sys.stdin.read() if path == "-" else Path(path).read_text(encoding="utf-8-sig")
    stripped = text.lstrip()
    tables: list[tuple[str | None, list[Any]]]
    if path == "-" or path.endswith(".json") or stripped[:1] in ("{", "["):
        try:
            doc = json.loads(text)
        except json.JSONDecodeError as exc:
            raise DevicesProblem([f"{name}: not valid JSON: {exc}"]) from None
        if isinstance(doc, dict):
            unknown = sorted(set(doc) - {"devices", "sensors"})
            if unknown:
                raise DevicesProblem(
                    [f"{name}: unknown key(s) {', '.join(unknown)}; expected devices, sensors"]
                )
            tables = [("devices", doc.get("devices") or []), ("sensors", doc.get("sensors") or [])]
        elif isinstance(doc, list):
            tables = [(None, doc)]
        else:
            raise DevicesProblem([f"{name}: expected a JSON object or array"])
    else:
        tables = [(None, list(csv.DictReader(io.StringIO(text))))]
    devices: list[dict[str, Any]] = []
    sensors: list[dict[str, Any]] = []
    for table, rows in tables:
        if not isinstance(rows, list):
            raise DevicesProblem([f"{name}: {table} must be an array of rows"])
        for index, row in enumerate(rows):
            line = index + 2 if table is None and not stripped.startswith(("[", "{")) else index
            where = f"{name} row {line}" if table is None else f"{name} {table}[{index}]"
            if not isinstance(row, dict):
                raise DevicesProblem([f"{where}: a row must be an object"])
            row = {str(k).strip().lower(): v for k, v in row.items() if k is not None}
            kind = table or ("sensors" if {"sensor_type", "sensor_uuid"} & set(row) else "devices")
            (sensors if kind == "sensors" else devices).append({**row, "_where": where})
    return devices, sensors


def parse_import(paths: list[str]) -> ImportPlan:
    """Every row of ``paths`` checked; ``DevicesProblem`` listing every problem found."""
    device_rows: list[dict[str, Any]] = []
    sensor_rows: list[dict[str, Any]] = []
    for path in paths:
        devices, sensors = load_tables(path)
        device_rows += devices
        sensor_rows += sensors
    plan = ImportPlan()
    problems: list[str] = []
    by_legacy_id: dict[str, str] = {}
    for row in device_rows:
        where = row["_where"]
        try:
            raw_uuid = _pick(row, "device_uuid", "uuid")
            if raw_uuid is None:
                raise DevicesProblem([f"{where}: device_uuid (or uuid) is required"])
            device_uuid = _uuid(raw_uuid, where)
            if device_uuid in plan.devices:
                raise DevicesProblem([f"{where}: device {device_uuid} appears twice"])
            key_hash = _pick(row, "device_key_sha256", "device_key_hash", "key_sha256")
            clear_key = _pick(row, "device_key")
            if key_hash is not None:
                key_hash = str(key_hash).strip().lower()
                if not _SHA256.match(key_hash):
                    raise DevicesProblem([f"{where}: device_key_sha256 is not 64 hex digits"])
            elif clear_key is not None:
                key_hash = hash_device_key(str(clear_key))
            enabled = _pick(row, "enabled", "is_active", "active")
            record = DeviceRecord(
                device_uuid=device_uuid,
                serial=str(_pick(row, "serial", "serial_number", "serial_no") or ""),
                key_sha256=key_hash,
                enabled=True if enabled is None else _bool(enabled, where),
            )
        except DevicesProblem as exc:
            problems += exc.problems
            continue
        plan.devices[device_uuid] = record
        if key_hash is not None:
            plan.has_key.add(device_uuid)
        if enabled is not None:
            plan.has_enabled.add(device_uuid)
        legacy_id = _pick(row, "id", "device_id")
        if legacy_id is not None:
            by_legacy_id[str(legacy_id).strip()] = device_uuid
    seen_ids: dict[int, str] = {}
    seen_uuids: set[str] = set()
    for row in sensor_rows:
        where = row["_where"]
        try:
            raw_id = _pick(row, "sensor_id", "id")
            raw_uuid = _pick(row, "sensor_uuid", "uuid")
            if raw_id is None or raw_uuid is None:
                raise DevicesProblem([f"{where}: sensor_id and sensor_uuid are required"])
            sensor_id = _sensor_id(raw_id, where)
            sensor_uuid = _uuid(raw_uuid, where)
            owner = _pick(row, "device_uuid")
            if owner is not None:
                device_uuid = _uuid(owner, where)
            else:
                legacy_device = _pick(row, "device_id")
                if legacy_device is None:
                    raise DevicesProblem([f"{where}: device_uuid or device_id is required"])
                found = by_legacy_id.get(str(legacy_device).strip())
                if found is None:
                    raise DevicesProblem(
                        [f"{where}: device_id {legacy_device} is not the id of an imported device"]
                    )
                device_uuid = found
            if sensor_id in seen_ids:
                raise DevicesProblem([f"{where}: sensor_id {sensor_id} appears twice"])
            if sensor_uuid in seen_uuids:
                raise DevicesProblem([f"{where}: sensor_uuid {sensor_uuid} appears twice"])
            sensor_type = _pick(row, "sensor_type", "type")
            sensor = SensorRecord(
                sensor_uuid=sensor_uuid,
                sensor_id=sensor_id,
                sensor_type=str(sensor_type).strip() if sensor_type is not None else None,
            )
        except DevicesProblem as exc:
            problems += exc.problems
            continue
        seen_ids[sensor_id] = device_uuid
        seen_uuids.add(sensor_uuid)
        plan.sensors.setdefault(device_uuid, []).append(sensor)
    if problems:
        raise DevicesProblem(problems)
    if not plan.devices and not plan.sensors:
        raise DevicesProblem(["the files hold no device and no sensor row"])
    return plan


def validate_command(args: argparse.Namespace) -> Any:
    """What can be checked before connecting (``DevicesProblem``/``OSError`` otherwise)."""
    command = args.devices_command
    if command == "import":
        return parse_import(args.files)
    if command == "add":
        device_uuid = _uuid(args.uuid, "--uuid") if args.uuid else str(uuid.uuid4())
        sensors = [parse_sensor_spec(spec) for spec in args.sensor]
        ids = [s.sensor_id for s in sensors]
        if len(set(ids)) != len(ids):
            raise DevicesProblem(["--sensor: the same sensor id is given twice"])
        return DeviceRecord(device_uuid=device_uuid, serial=args.serial, sensors=sensors)
    if command in ("disable", "enable"):
        return _uuid(args.uuid, "uuid")
    return None


# -- commands against the bucket --------------------------------------------------------------
async def _check_owners(
    registry: DeviceRegistry, device_uuid: str, sensors: list[SensorRecord]
) -> list[str]:
    """Problems where a sensor id/uuid already belongs to another device."""
    problems = []
    for sensor in sensors:
        for owner in (
            await registry.read_sensor(sensor.sensor_id),
            await registry.sensor_by_uuid(sensor.sensor_uuid),
        ):
            if owner is not None and owner.device_uuid != device_uuid:
                problems.append(
                    f"sensor {sensor.sensor_id} ({sensor.sensor_uuid}) already belongs to "
                    f"device {owner.device_uuid}"
                )
                break
    return problems


async def run(
    args: argparse.Namespace, checked: Any, registry: DeviceRegistry, out: TextIO, err: TextIO
) -> int:
    """Run a validated ``devices`` command against ``registry``; returns the exit code."""
    command = args.devices_command
    if command == "add":
        record: DeviceRecord = checked
        if await registry.read_device(record.device_uuid) is not None:
            print(
                f"tributary: device {record.device_uuid} is already registered "
                "(use `tributary devices import` to update it)",
                file=err,
            )
            return INVALID
        problems = await _check_owners(registry, record.device_uuid, record.sensors)
        if problems:
            print(f"tributary: nothing was written: {'; '.join(problems)}", file=err)
            return INVALID
        key = make_device_key()
        record.key_sha256 = hash_device_key(key)
        await registry.put_device(record)
        sensors = ", ".join(
            f"{s.sensor_id}:{s.sensor_type}:{s.sensor_uuid}" for s in record.sensors
        )
        print(
            f"registered device {record.device_uuid}"
            f"{f' with sensors {sensors}' if sensors else ''}; its key is shown only once:",
            file=err,
        )
        print(key, file=out)
    elif command == "list":
        devices = await registry.list_devices()
        if args.json:
            docs = [d.model_dump(mode="json", exclude={"key_sha256"}) for d in devices]
            print(json.dumps(docs, indent=2), file=out)
        for device in [] if args.json else devices:
            sensors = " ".join(f"{s.sensor_id}({s.sensor_type or '-'})" for s in device.sensors)
            state = "enabled" if device.enabled else "disabled"
            print(
                f"{device.device_uuid}  {device.serial or '-'}  {state}  sensors: {sensors or '-'}",
                file=out,
            )
    elif command in ("disable", "enable"):
        existing = await registry.read_device(checked)
        if existing is None:
            print(f"tributary: device {checked} is not registered", file=err)
            return NOT_FOUND
        existing.enabled = command == "enable"
        await registry.put_device(existing)
        print(f"device {checked} {command}d", file=err)
    elif command == "import":
        return await _import(checked, registry, out, err)
    return 0


async def _import(plan: ImportPlan, registry: DeviceRegistry, out: TextIO, err: TextIO) -> int:
    records: dict[str, DeviceRecord] = {}
    problems: list[str] = []
    for device_uuid in sorted(set(plan.devices) | set(plan.sensors)):
        existing = await registry.read_device(device_uuid)
        imported = plan.devices.get(device_uuid)
        if existing is None and imported is None:
            problems.append(
                f"sensors refer to device {device_uuid}, which is neither in the "
                "files nor registered"
            )
            continue
        record = (imported or existing).model_copy(deep=True)  # type: ignore[union-attr]
        if existing is not None:
            record.created_at = existing.created_at
            if device_uuid not in plan.has_key:
                record.key_sha256 = existing.key_sha256
            if device_uuid not in plan.has_enabled:
                record.enabled = existing.enabled
            record.sensors = list(existing.sensors)
        new = plan.sensors.get(device_uuid, [])
        new_ids = {s.sensor_id for s in new}
        record.sensors = [s for s in record.sensors if s.sensor_id not in new_ids] + new
        record.sensors.sort(key=lambda s: s.sensor_id)
        problems += await _check_owners(registry, device_uuid, new)
        records[device_uuid] = record
    if problems:
        print(f"tributary: invalid input, nothing was written: {'; '.join(problems)}", file=err)
        return INVALID
    generated = {}
    for device_uuid, record in records.items():
        if record.key_sha256 is None:
            key = make_device_key()
            record.key_sha256 = hash_device_key(key)
            generated[device_uuid] = key
        await registry.put_device(record)
    print(
        f"imported {len(records)} devices and {plan.sensor_count} sensors"
        + (f"; new keys for {len(generated)} devices, shown only once:" if generated else ""),
        file=err,
    )
    for device_uuid, key in generated.items():
        print(f"{device_uuid}\t{key}", file=out)
    return 0


async def _run_on_bus(settings: ServiceSettings, args: argparse.Namespace, checked: Any) -> int:
    nc = await connect_nats(settings, "tributary-cli", reconnect_attempts=2)
    try:
        js = nc.jetstream()
        await ensure_jetstream(js, settings.namespace)
        registry = DeviceRegistry(
            await js.key_value(settings.namespace.bucket(DEVICES_BUCKET)), cache_seconds=0
        )
        return await run(args, checked, registry, sys.stdout, sys.stderr)
    finally:
        await nc.close()


def execute(args: argparse.Namespace, settings: ServiceSettings) -> int:
    """``tributary devices …``: check the input, then run it against the bus; the exit code."""
    try:
        checked = validate_command(args)
    except DevicesProblem as exc:
        print("tributary: invalid input, nothing was written:", file=sys.stderr)
        for problem in exc.problems:
            print(f"  {problem}", file=sys.stderr)
        return INVALID
    except OSError as exc:
        print(f"tributary: cannot read the input: {exc}", file=sys.stderr)
        return INVALID
    try:
        return asyncio.run(_run_on_bus(settings, args, checked))
    except (OSError, TimeoutError, nats.errors.NoServersError) as exc:
        print(f"tributary: cannot reach NATS at {settings.nats_url}: {exc}", file=sys.stderr)
        return NOT_FOUND
