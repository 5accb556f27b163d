"""The README's settings table is the generated one, and its client is the tested file."""

from __future__ import annotations

from pathlib import Path

from gateway_ws.settings import GatewayWsSettings
from tributary_runtime.settings import settings_table

SERVICE = Path(__file__).resolve().parents[1]
README = (SERVICE / "README.md").read_text()


def test_readme_contains_the_generated_settings_table() -> None:
    section = README.split("\n## Settings\n", 1)[1].split("\n## ", 1)[0]
    table_lines = [line for line in section.splitlines() if line.startswith("|")]

    assert "\n".join(table_lines) == settings_table(GatewayWsSettings)


def test_every_setting_is_described() -> None:
    missing = [n for n, f in GatewayWsSettings.model_fields.items() if not f.description]

    assert missing == []


def test_readme_shows_the_example_client_verbatim() -> None:
    client = (SERVICE / "examples" / "client.py").read_text().strip()

    assert f"```python\n{client}\n```" in README
