"""The database behind ``MSSQL_DSN``: engine (pyodbc with FreeTDS or Microsoft's driver, or the
PostgreSQL stand-in), the start-up schema check, and the optional schema creation."""

from __future__ import annotations

from typing import Any

from sqlalchemy import inspect, text
from sqlalchemy.engine import URL, Engine

from tributary_sqlserver import build_engine as shared_build_engine
from tributary_sqlserver import engine_url as shared_engine_url
from writer_sqlserver.schema import LEGACY_TABLES, SCHEMA, metadata
from writer_sqlserver.settings import WriterSqlServerSettings
from writer_sqlserver.store import PROCEDURE

SCHEMA_FILE = "deploy/sqlserver/001_legacy_schema.sql"
PROCEDURE_FILE = "deploy/sqlserver/002_sp_insert_reading_and_check_threshold.sql"


class SchemaMissing(RuntimeError):
    """The database lacks a table or the procedure the writer needs (an operator must act)."""


def engine_url(settings: WriterSqlServerSettings) -> URL:
    """SQLAlchemy URL of ``MSSQL_DSN`` (``tributary_sqlserver.engine_url``: ``mssql://`` →
    ``mssql+pyodbc`` with the ODBC driver setting, FreeTDS also gets ``TDS_Version``;
    ``postgresql://`` → ``postgresql+psycopg2``)."""
    return shared_engine_url(settings.dsn, settings.mssql_odbc_driver, settings.mssql_tds_version)


def build_engine(settings: WriterSqlServerSettings) -> Engine:
    """A small pooled engine; every statement times out after ``write_timeout_seconds``."""
    return shared_build_engine(
        settings.dsn,
        odbc_driver=settings.mssql_odbc_driver,
        tds_version=settings.mssql_tds_version,
        timeout=settings.write_timeout_seconds,
        pool_size=settings.pool_size,
        fast_executemany=settings.mssql_fast_executemany,
    )


def missing_objects(engine: Engine, mode: str) -> list[str]:
    """Legacy tables (and, in procedure mode, the procedure) the database lacks."""
    with engine.connect() as conn:
        inspector = inspect(conn)
        missing = [f"{SCHEMA}.{t.name}" for t in LEGACY_TABLES
                   if not inspector.has_table(t.name, schema=SCHEMA)]
        if mode == "procedure" and not _procedure_exists(conn):
            missing.append(PROCEDURE)
    return missing


def _procedure_exists(conn: Any) -> bool:
    if conn.dialect.name == "mssql":
        return conn.execute(text("SELECT OBJECT_ID(:name, 'P')"), {"name": PROCEDURE}).scalar() \
            is not None
    schema, _, name = PROCEDURE.partition(".")
    return bool(conn.execute(text(
        "SELECT 1 FROM pg_proc p JOIN pg_namespace n ON n.oid = p.pronamespace "
        "WHERE n.nspname = :schema AND p.proname = :name"), {"schema": schema, "name": name},
    ).scalar())


def create_schema(engine: Engine) -> None:
    """Create the ``dbo`` schema (PostgreSQL) and any missing legacy table (dev and tests)."""
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            conn.execute(text(f"CREATE SCHEMA IF NOT EXISTS {SCHEMA}"))
        metadata.create_all(conn, checkfirst=True)


def check_schema(engine: Engine, mode: str, create: bool) -> None:
    """Make sure the writer's tables exist; raise ``SchemaMissing`` naming what is absent."""
    if create:
        create_schema(engine)
    missing = missing_objects(engine, mode)
    if missing:
        hint = PROCEDURE_FILE if missing == [PROCEDURE] else SCHEMA_FILE
        raise SchemaMissing(
            f"the database lacks {', '.join(missing)}: apply {hint} "
            "(or set MSSQL_CREATE_SCHEMA=true on a development database)"
        )
