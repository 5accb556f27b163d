"""``deploy/local/fleet.py``: a service that cannot start is an error naming it, not skipped."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.deploy.test_deploy_fleet_replicas import fleet_module


@pytest.fixture
def packages(tmp_path: Path) -> Iterator[Path]:
    sys.path.insert(0, str(tmp_path))
    yield tmp_path
    sys.path.remove(str(tmp_path))
    for name in [m for m in sys.modules if m.startswith("fleet_probe_")]:
        del sys.modules[name]


def package(root: Path, name: str, init: str = "", main: bool = True) -> None:
    (root / name).mkdir()
    (root / name / "__init__.py").write_text(init)
    if main:
        (root / name / "__main__.py").write_text("")


def test_every_fleet_service_imports_in_this_environment() -> None:
    fleet = fleet_module()

    assert [fleet.import_problem(s) for s in fleet.SERVICES] == [None] * len(fleet.SERVICES)


def test_a_service_whose_package_is_missing_is_named(packages: Path) -> None:
    fleet = fleet_module()

    problem = fleet.import_problem(fleet.Service("writer-x", "fleet_probe_absent", 1))

    assert problem is not None and problem.startswith("writer-x: package fleet_probe_absent")


def test_a_service_whose_package_fails_to_import_is_named_with_the_error(packages: Path) -> None:
    package(packages, "fleet_probe_broken", init="import fleet_probe_no_such_dependency\n")
    fleet = fleet_module()

    problem = fleet.import_problem(fleet.Service("gateway-x", "fleet_probe_broken", 1))

    assert problem is not None
    assert problem.startswith("gateway-x: package fleet_probe_broken does not import")
    assert "fleet_probe_no_such_dependency" in problem


def test_a_package_without_main_is_named(packages: Path) -> None:
    package(packages, "fleet_probe_nomain", main=False)
    fleet = fleet_module()

    problem = fleet.import_problem(fleet.Service("console-x", "fleet_probe_nomain", 1))

    assert problem == "console-x: fleet_probe_nomain.__main__ not found (is the service installed?)"


def test_a_startable_package_has_no_problem(packages: Path) -> None:
    package(packages, "fleet_probe_ok")
    fleet = fleet_module()

    assert fleet.import_problem(fleet.Service("ok", "fleet_probe_ok", 1)) is None


@pytest.mark.parametrize(
    ("code", "was_healthy", "expected"),
    [
        (1, False, "classifier exited with 1 before answering /health (see its output above)"),
        (2, False, "classifier refused its settings (exit 2)"),
        (2, True, "classifier refused its settings (exit 2)"),
        (1, True, None),  # died after it ran: restarted
        (-15, True, None),
    ],
)
def test_an_exit_before_health_stops_the_fleet_a_later_one_restarts(
    code: int, was_healthy: bool, expected: str | None
) -> None:
    assert fleet_module().exit_problem("classifier", code, was_healthy) == expected
