"""``tributary devices`` and the registry: parsing legacy exports, and the commands against the
real local NATS (each test in its own bus prefix)."""

from __future__ import annotations

import asyncio
import io
import json
from pathlib import Path
from typing import Any

import pytest

from tributary_contracts import DEVICES_BUCKET, Namespace
from tributary_operator import devices_cli
from tributary_operator.cli import build_parser
from tributary_runtime.devices import (
    DeviceRegistry,
    SensorDirectory,
    canonical_uuid,
    hash_device_key,
    key_matches,
    stream_type_of,
)

DEV_A = "11111111-1111-4111-8111-111111111111"
DEV_B = "22222222-2222-4222-8222-222222222222"
SEN_1 = "aaaaaaaa-1111-4111-8111-111111111111"
SEN_2 = "bbbbbbbb-1111-4111-8111-111111111111"

DEVICES_CSV = (
    "id,uuid,serial_number,is_active,device_key\n"
    f"1,{DEV_A.upper()},A-1,1,secret-a\n"
    f"2,{DEV_B},A-2,0,\n"
)
SENSORS_CSV = f"id,uuid,device_id,sensor_type\n101,{SEN_1},1,temperature\n102,{SEN_2},2,pressure\n"


def write(tmp_path: Path, name: str, text: str) -> str:
    path = tmp_path / name
    path.write_text(text)
    return str(path)


# -- parsing (no bus) -------------------------------------------------------------------------
def test_import_reads_the_legacy_csv_tables_and_joins_sensors_by_device_id(tmp_path: Path) -> None:
    plan = devices_cli.parse_import(
        [write(tmp_path, "devices.csv", DEVICES_CSV), write(tmp_path, "sensors.csv", SENSORS_CSV)]
    )
    a, b = plan.devices[DEV_A], plan.devices[DEV_B]
    assert (a.serial, a.enabled, a.key_sha256) == ("A-1", True, hash_device_key("secret-a"))
    assert (b.serial, b.enabled, b.key_sha256) == ("A-2", False, None)
    assert [(s.sensor_id, s.sensor_uuid, s.sensor_type) for s in plan.sensors[DEV_A]] == [
        (101, SEN_1, "temperature")
    ]
    assert [s.sensor_id for s in plan.sensors[DEV_B]] == [102]


def test_import_reads_a_json_export_with_both_tables(tmp_path: Path) -> None:
    doc = {
        "devices": [{"device_uuid": DEV_A, "serial": "X", "device_key_sha256": "ab" * 32}],
        "sensors": [{"sensor_id": 7, "sensor_uuid": SEN_1, "device_uuid": DEV_A, "type": "co2"}],
    }
    plan = devices_cli.parse_import([write(tmp_path, "export.json", json.dumps(doc))])
    assert plan.devices[DEV_A].key_sha256 == "ab" * 32
    assert [(s.sensor_id, s.sensor_type) for s in plan.sensors[DEV_A]] == [(7, "co2")]


def test_import_names_every_bad_row_and_field(tmp_path: Path) -> None:
    bad_sensors = (
        "id,uuid,device_id,sensor_type\n"
        f"x,{SEN_1},1,temperature\n"
        "5,not-a-uuid,1,temperature\n"
        f"6,{SEN_2},9,humidity\n"
    )
    with pytest.raises(devices_cli.DevicesProblem) as problem:
        devices_cli.parse_import(
            [write(tmp_path, "d.csv", DEVICES_CSV), write(tmp_path, "s.csv", bad_sensors)]
        )
    assert problem.value.problems == [
        "s.csv row 2: sensor id 'x' is not a non-negative integer",
        "s.csv row 3: 'not-a-uuid' is not a uuid",
        "s.csv row 4: device_id 9 is not the id of an imported device",
    ]


def test_sensor_spec_and_helpers() -> None:
    sensor = devices_cli.parse_sensor_spec(f"17:temperature:{SEN_1.upper()}")
    assert (sensor.sensor_id, sensor.sensor_type, sensor.sensor_uuid) == (17, "temperature", SEN_1)
    with pytest.raises(devices_cli.DevicesProblem, match="must look like ID:TYPE"):
        devices_cli.parse_sensor_spec("17")
    assert canonical_uuid(DEV_A.upper()) == DEV_A
    assert stream_type_of(" Temperature ") == "iot.temperature"
    assert stream_type_of(None) is None


# -- commands against the real bus -------------------------------------------------------------
@pytest.fixture
async def registry(jetstream: Any, bus_prefix: str) -> DeviceRegistry:
    kv = await jetstream.key_value(Namespace(bus_prefix).bucket(DEVICES_BUCKET))
    return DeviceRegistry(kv, cache_seconds=0)


async def tributary(registry: DeviceRegistry, *argv: str) -> tuple[int, str, str]:
    args = build_parser().parse_args(["devices", *argv])
    out, err = io.StringIO(), io.StringIO()
    try:
        checked = devices_cli.validate_command(args)
    except devices_cli.DevicesProblem as exc:
        return devices_cli.INVALID, "", str(exc)
    code = await devices_cli.run(args, checked, registry, out, err)
    return code, out.getvalue(), err.getvalue()


@pytest.mark.integration
async def test_add_prints_the_key_once_and_stores_only_its_hash(
    registry: DeviceRegistry, jetstream: Any, bus_prefix: str
) -> None:
    code, out, err = await tributary(
        registry, "add", "--uuid", DEV_A, "--serial", "SN-1", "--sensor", f"17:temperature:{SEN_1}"
    )
    assert code == 0, err
    key = out.strip()
    assert key.startswith("dev_") and "shown only once" in err
    device = await registry.device(DEV_A)
    assert device is not None and key_matches(device.record, key)
    assert not key_matches(device.record, key + "x")
    kv = await jetstream.key_value(Namespace(bus_prefix).bucket(DEVICES_BUCKET))
    stored = b"".join([(await kv.get(k)).value for k in await kv.keys()])
    assert key.encode() not in stored
    sensor = await registry.sensor(17)
    assert sensor is not None and (sensor.device_uuid, sensor.stream_type) == (
        DEV_A,
        "iot.temperature",
    )
    assert (await registry.sensor_by_uuid(SEN_1)) == sensor
    # the same sensor on another device is refused; the same device twice too
    assert (await tributary(registry, "add", "--sensor", "17:humidity"))[0] == 2
    assert (await tributary(registry, "add", "--uuid", DEV_A))[0] == 2


@pytest.mark.integration
async def test_disable_list_and_import_round_trip(registry: DeviceRegistry, tmp_path: Path) -> None:
    files = [write(tmp_path, "d.csv", DEVICES_CSV), write(tmp_path, "s.csv", SENSORS_CSV)]
    code, out, err = await tributary(registry, "import", *files)
    assert code == 0, err
    assert "imported 2 devices and 2 sensors" in err
    [line] = out.splitlines()  # device B had no key in the export: a new one, shown once
    uuid_b, key_b = line.split("\t")
    assert uuid_b == DEV_B and key_matches((await registry.read_device(DEV_B)), key_b)  # type: ignore[arg-type]

    assert (await tributary(registry, "disable", DEV_A))[0] == 0
    assert (await tributary(registry, "disable", "33333333-3333-4333-8333-333333333333"))[0] == 1
    _, listing, _ = await tributary(registry, "list")
    assert listing.splitlines() == [
        f"{DEV_A}  A-1  disabled  sensors: 101(temperature)",
        f"{DEV_B}  A-2  disabled  sensors: 102(pressure)",
    ]
    # a re-import keeps keys and merges sensors; an explicit is_active wins
    again = write(
        tmp_path,
        "s2.csv",
        f"sensor_id,sensor_uuid,device_uuid,sensor_type\n103,{SEN_2[:-1]}2,{DEV_A},humidity\n",
    )
    code, out, err = await tributary(registry, "import", again)
    assert (code, out) == (0, ""), err
    device = await registry.read_device(DEV_A)
    assert device is not None and [s.sensor_id for s in device.sensors] == [101, 103]
    assert device.enabled is False and device.key_sha256 == hash_device_key("secret-a")


@pytest.mark.integration
async def test_sensor_directory_follows_the_index(
    registry: DeviceRegistry, jetstream: Any, bus_prefix: str
) -> None:
    changes: list[int] = []
    kv = await jetstream.key_value(Namespace(bus_prefix).bucket(DEVICES_BUCKET))
    await tributary(registry, "add", "--uuid", DEV_A, "--sensor", "17:temperature")
    directory = SensorDirectory(kv, on_change=lambda: changes.append(1))
    await directory.start()
    try:
        found = directory.get(17)
        assert found is not None and found.device_uuid == DEV_A
        await tributary(registry, "add", "--uuid", DEV_B, "--sensor", "18:humidity")
        for _ in range(100):  # bounded wait for the watch
            if directory.get(18) is not None:
                break
            await asyncio.sleep(0.02)
        assert directory.get(18) is not None and directory.get(19) is None
        assert changes
    finally:
        await directory.stop()
