"""``deploy/local/fleet.py --replicas SERVICE=N``: parsing and what each replica gets."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

import pytest

ROOT = Path(__file__).resolve().parents[2]


def fleet_module() -> ModuleType:
    spec = importlib.util.spec_from_file_location("local_fleet", ROOT / "deploy/local/fleet.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("local_fleet", module)
    spec.loader.exec_module(module)
    return module


def test_replicas_get_their_own_ports_and_partition_settings() -> None:
    fleet = fleet_module()
    services = [s for s in fleet.SERVICES if s.name in ("classifier", "writer-postgres")]

    expanded = fleet.expand_replicas(services, {"writer-postgres": 2, "classifier": 2})

    assert [(s.label, s.port) for s in expanded] == [
        ("writer-postgres", 8020),
        ("writer-postgres#1", 9020),
        ("classifier", 8010),
        ("classifier#1", 9010),
    ]
    classifier = [dict(s.env) for s in expanded if s.name == "classifier"]
    assert classifier == [
        {"CLASSIFIER_REPLICAS": "2", "CLASSIFIER_REPLICA": "0"},
        {"CLASSIFIER_REPLICAS": "2", "CLASSIFIER_REPLICA": "1"},
    ]
    assert all(s.env == () for s in expanded if s.name == "writer-postgres")


def test_mqtt_replicas_get_distinct_stable_client_ids() -> None:
    fleet = fleet_module()
    mqtt = [s for s in fleet.SERVICES if s.name == "gateway-mqtt"]

    expanded = fleet.expand_replicas(mqtt, {"gateway-mqtt": 3}, "p1")

    # Replica 0 keeps the gateway's default id (tributary-gateway-mqtt-p1).
    assert [dict(s.env).get("MQTT_CLIENT_ID") for s in expanded] == [
        None,
        "tributary-gateway-mqtt-p1-1",
        "tributary-gateway-mqtt-p1-2",
    ]


@pytest.mark.parametrize(
    "value", ["writer-postgres", "writer-postgres=0", "nope=2", "classifier=x"]
)
def test_bad_replicas_option_is_refused_with_its_value(value: str) -> None:
    with pytest.raises(ValueError, match="--replicas expects SERVICE=N"):
        fleet_module().parse_replicas([value])
