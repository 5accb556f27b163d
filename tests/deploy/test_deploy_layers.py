"""What goes into an image is what each package declares, so the declarations must be the
imports: every first-party package a library or service imports (``src/`` only) is one of its
``pyproject.toml`` dependencies, no library imports a service, and no service needs the operator
CLI (``libs/operator``, which only the operator image holds)."""

from __future__ import annotations

import ast
import tomllib
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = sorted(p for p in [*ROOT.glob("libs/*"), *ROOT.glob("services/*")]
                  if (p / "pyproject.toml").exists())


def project(folder: Path) -> dict[str, Any]:
    project: dict[str, Any] = tomllib.loads((folder / "pyproject.toml").read_text())["project"]
    return project


def modules(folder: Path) -> list[str]:
    return [m.name for m in (folder / "src").iterdir() if (m / "__init__.py").exists()]


MODULE_OF = {module: folder for folder in PACKAGES for module in modules(folder)}


def imported_packages(folder: Path) -> set[Path]:
    """First-party packages (their folders) the ``src/`` code of ``folder`` imports."""
    found = set()
    for source in (folder / "src").rglob("*.py"):
        for node in ast.walk(ast.parse(source.read_text())):
            if isinstance(node, ast.Import):
                names = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
                names = [node.module]
            else:
                continue
            for name in names:
                target = MODULE_OF.get(name.split(".")[0])
                if target is not None and target != folder:
                    found.add(target)
    return found


@pytest.mark.parametrize("folder", PACKAGES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_first_party_imports_are_declared_dependencies(folder: Path) -> None:
    declared = {d.split(">")[0].split("=")[0].strip() for d in project(folder)["dependencies"]}
    needed = {str(project(p)["name"]) for p in imported_packages(folder)}

    assert needed <= declared, f"{folder.name} imports {sorted(needed - declared)} undeclared"


@pytest.mark.parametrize("folder", PACKAGES, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_no_library_imports_a_service_and_no_service_needs_the_operator_cli(folder: Path) -> None:
    imported = {p.relative_to(ROOT).as_posix() for p in imported_packages(folder)}

    if folder.parent.name == "libs":
        assert not {p for p in imported if p.startswith("services/")}
    if folder.name != "operator":
        assert "libs/operator" not in imported
        assert "tributary-operator" not in str(project(folder)["dependencies"])


def test_only_the_operator_package_installs_the_tributary_command() -> None:
    owners = {p.name for p in PACKAGES if "tributary" in project(p).get("scripts", {})}

    assert owners == {"operator"}
