"""What SQL Server will be sent: every statement compiled for the mssql+pyodbc dialect (qmark
parameters, as pyodbc executes them) and the shipped DDL, compared with reviewed snapshots.

After a deliberate change: ``UPDATE_SNAPSHOTS=1 .venv/bin/python -m pytest <this file>``, then
review the diff of ``tests/snapshots/``.
"""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy.dialects.mssql import pyodbc

from writer_sqlserver import store
from writer_sqlserver.schema import ddl

HERE = Path(__file__).resolve().parent
SNAPSHOT = HERE / "snapshots" / "tsql_statements.sql"
DDL_FILE = HERE.parents[2] / "deploy" / "sqlserver" / "001_legacy_schema.sql"

STATEMENTS = (
    "INSERT_READING", "SELECT_LATEST", "UPDATE_LATEST", "INSERT_LATEST", "NEWEST_ALERT",
    "CLOSE_ALERT", "INSERT_ALERT", "NEWEST_EVENT", "CLOSE_EVENT", "INSERT_EVENT",
)


def compiled_statements() -> str:
    dialect = pyodbc.dialect(paramstyle="qmark")
    parts = []
    for name in STATEMENTS:
        sql = str(getattr(store, name).compile(dialect=dialect))
        parts.append(f"-- {name}\n" + "\n".join(line.rstrip() for line in sql.splitlines()))
    call = store.procedure_call("mssql").compile(dialect=dialect)
    parts.append(f"-- procedure mode\n{call}")
    return "\n\n".join(parts) + "\n"


def check_snapshot(path: Path, actual: str) -> None:
    if os.environ.get("UPDATE_SNAPSHOTS") == "1":
        path.write_text(actual, encoding="utf-8")
    assert path.read_text(encoding="utf-8") == actual


def test_statements_compile_to_the_reviewed_tsql() -> None:
    check_snapshot(SNAPSHOT, compiled_statements())


def test_tsql_holds_the_locks_and_parameters_sql_server_needs() -> None:
    text = compiled_statements()
    # The reads that decide a write lock their range; bare parameters in a SELECT list are cast.
    assert text.count("WITH (UPDLOCK, HOLDLOCK)") == 4
    assert "CAST(? AS DATETIME2)" in text
    # No OUTPUT clause: SQL Server refuses OUTPUT without INTO on tables with triggers.
    assert "OUTPUT" not in text


def test_shipped_ddl_is_the_schema_metadata_compiled_for_sql_server() -> None:
    check_snapshot(DDL_FILE, ddl())
