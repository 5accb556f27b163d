"""The fleet the compatibility suite replays against, set up as the cut-over guide says: devices
and sensors imported from the legacy tables, the legacy API key imported by its hash, the legacy
thresholds imported — all with the operator's CLI, in the fleet's namespace."""

from __future__ import annotations

import hashlib
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.e2e.conftest import fleet_for_test
from tests.e2e.fleet_process import FleetProcess
from tests.e2e.legacy_compat import recordings as rec


def tributary(fleet: FleetProcess, *argv: str) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(Path(sys.executable).parent / "tributary"), *argv],
        env=fleet.service_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, f"tributary {argv[:2]}: {done.stderr}{done.stdout}"
    return done


def migrate_legacy_estate(fleet: FleetProcess, tmp: Path) -> None:
    """Cut-over steps 1–3: registry, keys, thresholds (see gateway-http's README)."""
    (tmp / "devices.csv").write_text(rec.DEVICES_CSV)
    (tmp / "sensors.csv").write_text(rec.SENSORS_CSV)
    tributary(fleet, "devices", "import", str(tmp / "devices.csv"), str(tmp / "sensors.csv"))
    digest = hashlib.sha256(rec.LEGACY_API_KEY.encode()).hexdigest()
    (tmp / "api_keys.csv").write_text(
        f"id,key_hash,role,is_active,client_name\n1,{digest},ADMIN,1,legacy global key\n"
    )
    tributary(fleet, "keys", "import", str(tmp / "api_keys.csv"))
    (tmp / "alert.csv").write_text(rec.ALERT_THRESHOLDS_CSV)
    (tmp / "delta.csv").write_text(rec.DELTA_THRESHOLDS_CSV)
    tributary(
        fleet, "thresholds", "import", "--alert", str(tmp / "alert.csv"),
        "--delta", str(tmp / "delta.csv"),
    )  # fmt: skip


@pytest.fixture(scope="module")
def fleet(servers: Any, tmp_path_factory: Any) -> Iterator[FleetProcess]:
    """Domain iot on PostgreSQL, DEVICE_AUTH_MODE=migration (the cut-over window)."""
    gen = fleet_for_test(
        servers,
        skip=("gateway-ws", "csv-importer", "ml-batch"),
        extra_env={"DEVICE_AUTH_MODE": "migration"},
    )
    running = next(gen)
    migrate_legacy_estate(running, tmp_path_factory.mktemp(f"legacy-{uuid.uuid4().hex[:6]}"))
    yield running
    next(gen, None)
