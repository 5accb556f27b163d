"""Migrations from 0007 on are additive, so that rolling back is reverting the image."""

from __future__ import annotations

import re

import pytest

from writer_postgres.migrate import load_migrations

LAST_NON_ADDITIVE = 6
"""0004 and 0005 renamed and dropped columns; every later migration must be additive."""

DESTRUCTIVE = re.compile(
    r"\b(DROP\s+(TABLE|COLUMN|SCHEMA|TYPE)|RENAME\b|ALTER\s+COLUMN\s+\S+\s+(SET\s+DATA\s+)?TYPE"
    r"|SET\s+NOT\s+NULL|TRUNCATE|DELETE\s+FROM|DROP\s+CONSTRAINT)\b",
    re.IGNORECASE,
)


def _statements(sql: str) -> str:
    return re.sub(r"--[^\n]*", "", sql)  # comments may say anything


@pytest.mark.parametrize(
    "migration",
    [m for m in load_migrations() if m.version > LAST_NON_ADDITIVE],
    ids=lambda m: f"{m.version:04d}_{m.name}",
)
def test_migration_is_additive(migration: object) -> None:
    found = DESTRUCTIVE.findall(_statements(migration.sql))  # type: ignore[attr-defined]
    assert found == [], f"a migration after {LAST_NON_ADDITIVE:04d} must be additive"


def test_the_check_recognises_what_0004_did() -> None:
    [m4] = [m for m in load_migrations() if m.version == 4]
    assert DESTRUCTIVE.search(_statements(m4.sql))
