"""The README documents exactly the settings the code reads."""

from __future__ import annotations

from pathlib import Path

from tributary_runtime.settings import settings_table
from writer_sqlserver.settings import WriterSqlServerSettings

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_settings_table_is_generated_from_the_settings_class() -> None:
    text = README.read_text(encoding="utf-8")
    section = text.split("## Settings\n", 1)[1].split("\n\n", 1)[0]
    assert section == settings_table(WriterSqlServerSettings)
