"""An MQTT burst at the fleet's default settings, reconciled exactly: 50,000 QoS 1 messages from
one client as fast as it can send them, and every message the broker PUBACKed is one row.

The broker is the repository's configuration (``PrivateMosquitto`` renders
``deploy/mosquitto/mosquitto.conf``, as ``make run`` does), the fleet runs ``deploy/local/fleet.py``
with its defaults: the gateway's session must hold what it has not yet taken (Mosquitto's own
default queue of 1000 lost 11,766 acknowledged messages of such a burst).
"""

from __future__ import annotations

import os

import pytest

from tests.e2e.faults.conftest import PrivateServers
from tests.e2e.faults.load import LoadPlan
from tests.e2e.faults.test_faults import run_scenario
from tests.e2e.fleet_process import FleetProcess

pytestmark = [pytest.mark.e2e, pytest.mark.integration, pytest.mark.faults]

BURST = int(os.environ.get("TRIBUTARY_MQTT_BURST", "50000"))


async def test_a_burst_of_50000_qos1_messages_from_one_client_is_stored_one_row_each(
    fleet: FleetProcess, private_servers: PrivateServers
) -> None:
    load = LoadPlan(
        tag="mqttburst",
        duration=0.0,  # no pacing: as fast as the client publishes
        mqtt_messages=BURST,
        transports=("mqtt",),
        retry_for=600.0,
    )

    result, ledger = await run_scenario(
        "mqtt burst", fleet, private_servers, load, None, 0.0, drain_timeout=600.0
    )

    assert ledger.by_transport()["mqtt"]["acked"] == BURST
    assert result.counts["stored"] == BURST
