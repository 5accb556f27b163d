"""The README's settings table is exactly the one generated from the settings class."""

from __future__ import annotations

from pathlib import Path

from gateway_http.settings import GatewayHttpSettings
from tributary_runtime.settings import settings_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_contains_the_generated_settings_table() -> None:
    table = settings_table(GatewayHttpSettings)
    readme = README.read_text()

    section = readme.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    table_lines = [line for line in section.splitlines() if line.startswith("|")]

    assert "\n".join(table_lines) == table


def test_every_setting_is_described() -> None:
    missing = [n for n, f in GatewayHttpSettings.model_fields.items() if not f.description]

    assert missing == []
