"""The README documents exactly the settings the code reads and shows committed screenshots."""

from __future__ import annotations

import re
from pathlib import Path

from console.settings import ConsoleSettings
from tributary_runtime.settings import settings_table

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_settings_table_is_generated_from_the_settings_class() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Settings\n", 1)[1].split("\n\n", 1)[0]
    assert section == settings_table(ConsoleSettings)


def test_every_screenshot_the_readme_shows_exists() -> None:
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", README.read_text(encoding="utf-8"))
    assert len(images) == 7
    assert [i for i in images if not (README.parent / i).exists()] == []
