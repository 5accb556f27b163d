"""Staged-rollout operations: the SLO rules (deploy/prometheus/tributary-rules.yml) pass their
promtool unit tests, query only metrics the services (or prometheus-nats-exporter) export, are
loaded by Prometheus in compose, and deploy/README.md says what to do for every alert and maps
every seed feature flag to its fleet equivalent."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from tests.deploy.test_deploy_monitoring import PREFIXES, exposed_metrics

ROOT = Path(__file__).resolve().parents[2]
RULES = ROOT / "deploy/prometheus/tributary-rules.yml"
RULE_TESTS = ROOT / "deploy/prometheus/tributary-rules.test.yml"
NAME = re.compile(r"[a-z_:][a-z0-9_:]*")  # metric names may hold colons (recording rules)
NATS_EXPORTER = {  # prometheus-nats-exporter -jsz=all
    "jetstream_consumer_num_pending",
    "jetstream_consumer_num_ack_pending",
    "jetstream_stream_total_messages",
}


def rules() -> list[dict[str, object]]:
    return [r for g in yaml.safe_load(RULES.read_text())["groups"] for r in g["rules"]]


def alerts() -> list[str]:
    return [str(r["alert"]) for r in rules() if "alert" in r]


def promtool() -> str:
    path = shutil.which("promtool")
    if path is None:
        pytest.skip("promtool is not installed (Debian package prometheus, see install.sh)")
    return path


def test_promtool_accepts_the_rules() -> None:
    result = subprocess.run(
        [promtool(), "check", "rules", str(RULES)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_rule_unit_tests_pass() -> None:
    result = subprocess.run(
        [promtool(), "test", "rules", RULE_TESTS.name],
        cwd=RULE_TESTS.parent,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stdout + result.stderr


def test_every_alert_is_exercised_by_the_unit_tests() -> None:
    tested = {
        case["alertname"]
        for test in yaml.safe_load(RULE_TESTS.read_text())["tests"]
        for case in test.get("alert_rule_test", [])
    }
    assert tested == set(alerts())


@pytest.mark.parametrize("rule", rules(), ids=lambda r: str(r.get("alert") or r.get("record")))
def test_rule_queries_only_exported_metrics(rule: dict[str, object]) -> None:
    recorded = {str(r["record"]) for r in rules() if "record" in r}
    expr = re.sub(r'"[^"]*"', "", str(rule["expr"]))  # label values are not metric names
    words = NAME.findall(expr)
    for word in words:
        if word.startswith("jetstream_"):
            assert word in NATS_EXPORTER
        service = next((s for p, s in PREFIXES.items() if word.startswith(p)), None)
        if service is not None:
            exposed = exposed_metrics(service)
            assert exposed is not None and word in exposed, f"{word} is not exported by {service}"
        if ":" in word:
            assert word in recorded, f"{word} is not recorded by any rule"
    assert any(w in recorded or w.startswith(("jetstream_", *PREFIXES)) for w in words)


def test_prometheus_loads_the_rules_in_compose() -> None:
    config = yaml.safe_load((ROOT / "deploy/prometheus/prometheus.yml").read_text())
    assert config["rule_files"] == ["/etc/prometheus/tributary-rules.yml"]
    compose = yaml.safe_load((ROOT / "deploy/compose.yaml").read_text())
    assert (
        "./prometheus/tributary-rules.yml:/etc/prometheus/tributary-rules.yml:ro"
        in compose["services"]["prometheus"]["volumes"]
    )


def test_the_deploy_readme_has_a_runbook_entry_per_alert() -> None:
    headings = re.findall(r"^#### (\w+)$", (ROOT / "deploy/README.md").read_text(), re.M)
    assert set(alerts()) <= set(headings)
    for rule in rules():
        if "alert" in rule:
            runbook = rule["annotations"]["runbook"]  # type: ignore[index]
            assert runbook == f"deploy/README.md#{str(rule['alert']).lower()}"


SEED_FLAGS = (
    "FF_MQTT_UNIVERSAL",
    "FF_MQTT_MULTI_DOMAIN",
    "ENABLE_MQTT_MULTI_DOMAIN",
    "FF_MQTT_INGEST_ENABLED",
    "FF_MQTT_MODULAR_RECEIVER",
    "FF_WEBSOCKET_ENABLED",
    "ENABLE_WEBSOCKET_INGEST",
    "FF_CSV_ENABLED",
    "ENABLE_CSV_INGEST",
    "ENABLE_AGNOSTIC_API",
    "USE_AGNOSTIC_CONSTRAINTS",
    "DEVICE_AUTH_ENABLED",
    "REDIS_ENABLED",
)


@pytest.mark.parametrize("flag", SEED_FLAGS)
def test_the_deploy_readme_maps_every_seed_flag(flag: str) -> None:
    rows = [
        line
        for line in (ROOT / "deploy/README.md").read_text().splitlines()
        if line.startswith("| ") and f"`{flag}`" in line
    ]
    assert len(rows) == 1, f"{flag} must have one row in the seed-flag table"
