"""The Grafana dashboard and the Prometheus scrape configs agree with the services: every metric
a panel queries is one a service's metrics.py defines (for the services in this checkout), and
every service is scraped on its port, in compose and on Kubernetes."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.deploy.test_deploy_compose import PORTS

ROOT = Path(__file__).resolve().parents[2]
DASHBOARD = ROOT / "deploy/grafana/dashboards/tributary.json"
PROMETHEUS = ROOT / "deploy/prometheus/prometheus.yml"
PROMETHEUS_K8S = ROOT / "deploy/prometheus/prometheus-kubernetes.yml"
PREFIXES = {service.replace("-", "_") + "_": service for service in PORTS}
METRIC_DEF = re.compile(r"\b(Counter|Gauge|Histogram|Summary)\(\s*\"([a-z_][a-z0-9_]*)\"", re.S)
IDENTIFIER = re.compile(r"[a-z_][a-z0-9_]*")


def exposed_metrics(service: str) -> set[str] | None:
    """Sample names a service exposes, from its metrics.py; None if it has none here."""
    files = list((ROOT / "services" / service / "src").glob("*/metrics.py"))
    if not files:
        return None
    names: set[str] = set()
    for kind, name in METRIC_DEF.findall("".join(f.read_text() for f in files)):
        if kind == "Counter":
            names.add(name.removesuffix("_total") + "_total")
        elif kind in ("Histogram", "Summary"):
            names |= {f"{name}_bucket", f"{name}_sum", f"{name}_count"}
        else:
            names.add(name)
    return names


def dashboard() -> dict[str, Any]:
    return json.loads(DASHBOARD.read_text())


def queried_metrics() -> set[str]:
    names = set()
    for panel in dashboard()["panels"]:
        for target in panel["targets"]:
            for word in IDENTIFIER.findall(target["expr"]):
                if any(word.startswith(p) for p in PREFIXES):
                    names.add(word)
    return names


def test_dashboard_panels_are_well_formed() -> None:
    panels = dashboard()["panels"]
    ids = [p["id"] for p in panels]

    assert len(ids) == len(set(ids)) >= 10
    for panel in panels:
        assert panel["datasource"]["uid"] == "${datasource}"
        assert panel["gridPos"]["x"] + panel["gridPos"]["w"] <= 24
        assert panel["targets"] and all(t["expr"] for t in panel["targets"])


def test_every_service_appears_on_the_dashboard() -> None:
    services = {PREFIXES[p] for name in queried_metrics() for p in PREFIXES if name.startswith(p)}

    assert services >= set(PORTS) - {"ml-batch"}  # ml-batch: its own runs, not the flow


@pytest.mark.parametrize("metric", sorted(queried_metrics()))
def test_dashboard_metric_is_defined_by_its_service(metric: str) -> None:
    service = next(s for p, s in PREFIXES.items() if metric.startswith(p))
    exposed = exposed_metrics(service)
    if exposed is None:
        pytest.skip(f"{service} has no metrics.py in this checkout yet")

    assert metric in exposed


def test_compose_prometheus_scrapes_every_service_on_its_port() -> None:
    jobs = {j["job_name"]: j for j in yaml.safe_load(PROMETHEUS.read_text())["scrape_configs"]}

    assert set(jobs) == set(PORTS) | {"nats"}
    for service, port in PORTS.items():
        (sd,) = jobs[service]["dns_sd_configs"]
        assert (sd["names"], sd["port"]) == ([service], port)


def test_kubernetes_pods_carry_the_annotations_the_scrape_config_keeps() -> None:
    config = yaml.safe_load(PROMETHEUS_K8S.read_text())["scrape_configs"][0]
    kept = [r for r in config["relabel_configs"] if r.get("action") == "keep"]
    assert [r["source_labels"][0] for r in kept] == [
        "__meta_kubernetes_pod_annotation_prometheus_io_scrape",
        "__meta_kubernetes_pod_label_app_kubernetes_io_part_of",
    ]
    for service, port in PORTS.items():
        (workload,) = [
            d
            for d in yaml.safe_load_all((ROOT / f"deploy/k8s/base/{service}.yaml").read_text())
            if d["kind"] in ("Deployment", "StatefulSet")
        ]
        pod = workload["spec"]["template"]["metadata"]
        assert pod["annotations"]["prometheus.io/scrape"] == "true"
        assert pod["annotations"]["prometheus.io/port"] == str(port)
        assert pod["labels"]["app.kubernetes.io/part-of"] == "tributary"
