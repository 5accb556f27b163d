"""The legacy IoT system through the fleet, as processes (default ``SINK_ROUTES`` ``*=postgres``):
a device registered with ``tributary devices add``, its packets over HTTP and a reading on the
legacy MQTT topic end as rows with the IoT classes; the old endpoints answer in their old shapes.
"""

from __future__ import annotations

import asyncio
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.e2e.conftest import fleet_for_test
from tests.e2e.fleet_process import FleetProcess
from tests.e2e.rows import rows_for
from tests.e2e.test_e2e_mqtt import mosquitto_pub, wait_mqtt_ready

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

DEVICE = "0f6c1b2e-7a51-4c1c-9b1a-3e0b0e7f1a11"
TEMP = "5b0e3a4e-2a7d-4f55-9a4b-9d1c9f0e0a01"
HUMID = "5b0e3a4e-2a7d-4f55-9a4b-9d1c9f0e0a02"
T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)


def tributary(fleet: FleetProcess, *argv: str) -> subprocess.CompletedProcess[str]:
    """The operator's CLI, in the fleet's namespace."""
    return subprocess.run(
        [str(Path(sys.executable).parent / "tributary"), *argv],
        env=fleet.service_env(),
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )


@pytest.fixture(scope="module")
def fleet(servers: Any) -> Iterator[FleetProcess]:
    """The fleet without the gateways this module does not use (less start-up CPU)."""
    yield from fleet_for_test(servers, skip=("gateway-ws", "csv-importer"))


@pytest.fixture(scope="module")
def device_key(fleet: FleetProcess) -> str:
    done = tributary(
        fleet,
        "devices", "add", "--uuid", DEVICE, "--serial", "SN-1",
        "--sensor", f"17:temperature:{TEMP}", "--sensor", f"18:humidity:{HUMID}",
        "--sensor", "21:pressure",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    return done.stdout.strip().splitlines()[-1]


async def post(fleet: FleetProcess, path: str, body: Any, headers: dict[str, str]) -> Any:
    async with httpx.AsyncClient(base_url=fleet.url("gateway-http"), timeout=10) as client:
        return await client.post(path, json=body, headers=headers)


def reading(sensor_uuid: str, value: float, minutes: int) -> dict[str, Any]:
    return {
        "sensor_uuid": sensor_uuid,
        "value": value,
        "timestamp": (T0 + timedelta(minutes=minutes)).isoformat(),
    }


async def test_packets_end_as_rows_with_the_iot_classes(
    fleet: FleetProcess, device_key: str
) -> None:
    first = {
        "device_uuid": DEVICE,
        "readings": [reading(TEMP, 21.5, 0), reading(HUMID, 101.0, 0)],
    }
    spike = {"device_uuid": DEVICE, "readings": [reading(TEMP, 40.0, 1)]}

    replies = [
        await post(fleet, "/ingest/packets", first, {"X-Device-Key": device_key}),
        await post(fleet, "/ingest/packets", spike, {"X-Device-Key": device_key}),
    ]

    assert [(r.status_code, r.json()) for r in replies] == [
        (200, {"inserted": 2}),
        (200, {"inserted": 1}),
    ]
    rows = await rows_for(fleet.postgres_dsn, DEVICE, want=3, order_by="stream_id, time")
    got = [(r["stream_id"], r["value"], r["cls"], r["stream_type"], r["transport"]) for r in rows]
    assert [g for g in got if g[0] in ("17", "18")] == [
        ("17", 21.5, "normal", "iot.temperature", "http"),  # ML_PREDICTION
        ("17", 40.0, "anomaly", "iot.temperature", "http"),  # WARNING: delta spike 18.5 > 10
        ("18", 101.0, "critical", "iot.humidity", "http"),  # ALERT: above the physical 100
    ]
    assert all(r["domain"] == "iot" for r in rows)


async def test_a_legacy_mqtt_reading_ends_as_a_row_of_its_device(
    fleet: FleetProcess, device_key: str
) -> None:
    await wait_mqtt_ready(fleet)
    mosquitto_pub(fleet, "iot/sensors/21/readings", '{"value": 250.0, "timestamp": 1772053200}')

    deadline = time.monotonic() + 20
    rows: list[Any] = []
    while time.monotonic() < deadline:
        rows = [
            r for r in await rows_for(fleet.postgres_dsn, DEVICE, want=1) if r["stream_id"] == "21"
        ]
        if rows:
            break
        await asyncio.sleep(0.2)
    assert [(r["value"], r["cls"], r["stream_type"], r["transport"], r["time"]) for r in rows] == [
        (250.0, "critical", "iot.pressure", "mqtt", T0)  # ALERT: below the physical 300 hPa
    ]


async def test_an_unknown_device_key_gets_401_and_nothing_is_stored(
    fleet: FleetProcess, device_key: str
) -> None:
    packet = {"device_uuid": DEVICE, "readings": [reading(TEMP, 22.0, 30)]}
    reply = await post(fleet, "/ingest/packets", packet, {"X-Device-Key": "dev_not-the-key"})
    assert (reply.status_code, reply.json()) == (
        401,
        {"detail": f"X-Device-Key is not valid for device {DEVICE}"},
    )
    await asyncio.sleep(1.0)
    rows = await rows_for(fleet.postgres_dsn, DEVICE, want=0, timeout=1)
    assert T0 + timedelta(minutes=30) not in {r["time"] for r in rows}


async def test_readings_bulk_and_status_answer_in_the_legacy_shapes(
    fleet: FleetProcess, device_key: str
) -> None:
    key = {"X-API-Key": fleet.admin_key}
    one = await post(
        fleet, "/ingest/readings", {"sensor_id": 77, "value": 5.0, "timestamp": 1772053200}, key
    )
    bulk = await post(
        fleet,
        "/ingest/readings/bulk",
        {"readings": [{"sensor_id": 77, "value": 6.0, "timestamp": 1772053260}]},
        key,
    )
    invalid = await post(fleet, "/ingest/readings", {"sensor_id": 77}, key)

    assert (one.status_code, one.json()) == (200, {"inserted": 1})
    assert (bulk.status_code, bulk.json()) == (200, {"inserted": 1})
    assert invalid.status_code == 422
    assert [(d["loc"], d["type"]) for d in invalid.json()["detail"]] == [
        (["body", "value"], "missing")
    ]
    rows = await rows_for(fleet.postgres_dsn, "sensor-77", want=2)
    assert [(r["stream_id"], r["value"], r["cls"]) for r in rows] == [
        ("77", 5.0, "normal"),
        ("77", 6.0, "normal"),
    ]

    # Sensor 18 got 101 % (critical, an alert opened on that first violation): its status.
    status: Any = None
    async with httpx.AsyncClient(base_url=fleet.url("gateway-http"), timeout=10) as client:
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            status = await client.get("/sensors/18/status", headers=key)
            if status.status_code == 200 and status.json()["active_alert"]:
                break
            await asyncio.sleep(0.2)
    assert status.status_code == 200, status.text
    body = status.json()
    assert {k: body[k] for k in ("sensor_id", "device_uuid", "sensor_uuid", "sensor_type")} == {
        "sensor_id": 18,
        "device_uuid": DEVICE,
        "sensor_uuid": HUMID,
        "sensor_type": "humidity",
    }
    assert body["state"] == "ALERT"
    assert (body["latest"]["value"], body["latest"]["classification"]) == (101.0, "ALERT")
    assert body["active_alert"]["rule"] == "physical_range"
    assert body["active_alert"]["severity"] == "critical"
