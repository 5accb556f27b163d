"""Static checks of deploy/k8s: the kustomize base and the production overlay render, and every
rendered object validates against the Kubernetes OpenAPI schemas in strict mode (unknown fields
refused) with kubernetes-validate from PyPI, which ships those schemas.

Rendering uses ``kubectl kustomize`` (kustomize built into kubectl) when kubectl is installed;
without it the base's files are validated one by one and the overlay test skips, saying so.
"""

from __future__ import annotations

import copy
import functools
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from tributary_contracts.ports import SERVICE_PORTS as PORTS  # the code's service ports

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
PRODUCTION = K8S / "overlays" / "production"
KUBERNETES_VERSION = "1.30.0"  # pod-index label (classifier partitions) needs >= 1.28
KUBECTL = shutil.which("kubectl")


def render(path: Path) -> list[dict[str, Any]]:
    """The manifests kustomize builds from ``path`` (a fresh copy each call)."""
    return copy.deepcopy(_render(path))


@functools.cache
def _render(path: Path) -> list[dict[str, Any]]:
    if KUBECTL:
        result = subprocess.run(
            [KUBECTL, "kustomize", str(path)], capture_output=True, text=True, timeout=60
        )
        assert result.returncode == 0, result.stderr
        return [d for d in yaml.safe_load_all(result.stdout) if d]
    if path != BASE:
        pytest.skip("kubectl (with built-in kustomize) is not installed: overlay not rendered")
    kustomization = yaml.safe_load((BASE / "kustomization.yaml").read_text())
    return [
        d
        for f in kustomization["resources"]
        for d in yaml.safe_load_all((BASE / f).read_text())
        if d
    ]


def schema_errors(docs: list[dict[str, Any]]) -> list[str]:
    import kubernetes_validate

    errors = []
    for doc in docs:
        try:
            kubernetes_validate.validate(doc, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            errors.append(f"{doc['kind']}/{doc['metadata']['name']}: {exc.message}")
    return errors


def by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, dict[str, Any]]:
    return {d["metadata"]["name"]: d for d in docs if d["kind"] == kind}


def workloads(docs: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    return {**by_kind(docs, "Deployment"), **by_kind(docs, "StatefulSet")}


@pytest.fixture(scope="module", params=["base", "production"])
def rendered(request: pytest.FixtureRequest) -> list[dict[str, Any]]:
    return render(BASE if request.param == "base" else PRODUCTION)


def test_every_object_validates_against_the_kubernetes_schema(
    rendered: list[dict[str, Any]],
) -> None:
    assert schema_errors(rendered) == []


def test_schema_validation_catches_a_wrong_field() -> None:
    deployment = dict(by_kind(render(BASE), "Deployment")["gateway-http"])
    deployment["spec"] = {**deployment["spec"], "replica": 2}  # typo of replicas

    errors = schema_errors([deployment])

    assert len(errors) == 1 and "replica" in errors[0]


def test_every_service_has_workload_service_pdb_probes_and_requests(
    rendered: list[dict[str, Any]],
) -> None:
    services, pdbs = by_kind(rendered, "Service"), by_kind(rendered, "PodDisruptionBudget")
    for name, port in PORTS.items():
        workload = workloads(rendered)[name]
        pod = workload["spec"]["template"]["spec"]
        (container,) = pod["containers"]
        assert container["image"].split(":")[0].endswith(f"tributary/{name}")
        assert container["ports"] == [{"name": "http", "containerPort": port}]
        assert {"name": "PORT", "value": str(port)} in container["env"]
        assert container["livenessProbe"]["httpGet"]["path"] == "/health"
        assert container["readinessProbe"]["httpGet"]["path"] == "/ready"
        assert {"cpu", "memory"} <= set(container["resources"]["requests"])
        assert pod["securityContext"]["runAsNonRoot"] is True
        labels = workload["spec"]["selector"]["matchLabels"]
        assert services[name]["spec"]["selector"] == labels
        assert services[name]["spec"]["ports"][0]["port"] == port
        assert pdbs[name]["spec"]["selector"]["matchLabels"] == labels


def test_nats_is_a_cluster_of_three_with_jetstream_and_sync_interval(
    rendered: list[dict[str, Any]],
) -> None:
    nats = by_kind(rendered, "StatefulSet")["nats"]
    config = by_kind(rendered, "ConfigMap")["nats-config"]["data"]["nats.conf"]
    image = nats["spec"]["template"]["spec"]["containers"][0]["image"]
    version = tuple(int(p) for p in image.split(":")[1].split("-")[0].split("."))

    assert nats["spec"]["replicas"] == 3
    assert version >= (2, 10, 23)
    assert "jetstream {" in config and "sync_interval:" in config
    assert [f"nats://nats-{i}.nats:6222" in config for i in range(3)] == [True] * 3
    assert by_kind(rendered, "PodDisruptionBudget")["nats"]["spec"]["maxUnavailable"] == 1


def test_streams_are_bootstrapped_r3(rendered: list[dict[str, Any]]) -> None:
    job = by_kind(rendered, "Job")["tributary-bootstrap"]
    config = by_kind(rendered, "ConfigMap")["tributary-config"]["data"]

    assert job["spec"]["template"]["spec"]["containers"][0]["command"] == [
        "tributary",
        "bootstrap",
    ]
    assert "tributary/operator:" in job["spec"]["template"]["spec"]["containers"][0]["image"]
    assert config["JETSTREAM_REPLICAS"] == "3"


def test_classifier_replicas_setting_equals_its_replicas(rendered: list[dict[str, Any]]) -> None:
    classifier = workloads(rendered)["classifier"]
    config = by_kind(rendered, "ConfigMap")["tributary-config"]["data"]

    assert classifier["kind"] == "StatefulSet"  # the ordinal is the replica index
    assert int(config["CLASSIFIER_REPLICAS"]) == classifier["spec"]["replicas"]


def test_production_scales_out_and_keeps_secrets_out_of_git() -> None:
    docs = render(PRODUCTION)
    replicas = {name: w["spec"]["replicas"] for name, w in workloads(docs).items()}

    assert by_kind(docs, "Secret") == {}
    assert {d["metadata"].get("namespace") for d in docs if d["kind"] != "Namespace"} == {
        "tributary"
    }
    assert all(replicas[s] >= 2 for s in PORTS if s != "ml-batch")
    assert by_kind(docs, "ConfigMap")["tributary-config"]["data"]["SINK_ROUTES"] == (
        "iot=sqlserver,*=postgres"
    )
