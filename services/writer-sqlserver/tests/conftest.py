"""Fixtures of writer-sqlserver tests: readings/batch builders and the PostgreSQL stand-in.

The stand-in is a per-test PostgreSQL database (root ``database_dsn`` fixture) holding the same
schema metadata in schema ``dbo``; the writer reaches it through the same engine factory and
statements as SQL Server (only the dialect differs).
"""

from __future__ import annotations

import os
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import asyncpg
import pytest
from sqlalchemy import select
from sqlalchemy.engine import Engine, make_url

from tributary_contracts import ClassifiedBatch, ClassifiedPoint, LegacyIds, PointClass, Transport
from writer_sqlserver.database import build_engine, create_schema
from writer_sqlserver.settings import WriterSqlServerSettings

T0 = datetime(2026, 2, 25, 21, 0, 0, 123456, tzinfo=UTC)
T0_NAIVE = T0.replace(tzinfo=None)


def at(seconds: float) -> datetime:
    """Naive UTC time ``seconds`` after T0 (what the legacy tables hold)."""
    return T0_NAIVE + timedelta(seconds=seconds)


def build_batch(
    values: list[tuple[int, float, float]],
    *,
    cls: PointClass = PointClass.NORMAL,
    source_id: str = "dev-0001",
    domain: str = "iot",
    legacy: bool = True,
) -> ClassifiedBatch:
    """A classified IoT batch of ``(sensor_id, seconds after T0, value)`` points."""
    points = [
        ClassifiedPoint(
            stream_id=str(sensor_id),
            value=value,
            ts=T0 + timedelta(seconds=seconds),
            stream_type="temperature",
            reason=f"value {value} ({cls.value})",
            rule="none" if cls is PointClass.NORMAL else "max_value",
            legacy=LegacyIds(sensor_id=sensor_id) if legacy else None,
        )
        for sensor_id, seconds, value in values
    ]
    return ClassifiedBatch(
        domain=domain, source_id=source_id, transport=Transport.HTTP,
        received_at=T0 + timedelta(minutes=5), cls=cls,
        classified_at=T0 + timedelta(minutes=6), points=points,
    )


def settings_for(dsn: str, **overrides: Any) -> WriterSqlServerSettings:
    return WriterSqlServerSettings(mssql_dsn=dsn, **overrides)  # type: ignore[arg-type]


async def create_database(dsn: str) -> None:
    """Create the (not yet existing) database of the root ``database_dsn`` fixture."""
    base, _, name = dsn.rpartition("/")
    conn = await asyncpg.connect(f"{base}/postgres")
    try:
        await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()


@pytest.fixture
async def standin_dsn(database_dsn: str) -> AsyncIterator[str]:
    """A fresh PostgreSQL database with the legacy schema in ``dbo``."""
    await create_database(database_dsn)
    engine = build_engine(settings_for(database_dsn))
    create_schema(engine)
    engine.dispose()
    yield database_dsn


@pytest.fixture
def standin_engine(standin_dsn: str) -> Iterator[Engine]:
    engine = build_engine(settings_for(standin_dsn))
    yield engine
    engine.dispose()


def rows(engine: Engine, table: Any, *columns: str) -> list[tuple[Any, ...]]:
    """``columns`` of every row of ``table``, sorted."""
    with engine.connect() as conn:
        result = conn.execute(select(*(table.c[c] for c in columns)))
        return sorted(tuple(r) for r in result)


# --- a real SQL Server, when there is one ----------------------------------------------------

DEPLOY = Path(__file__).resolve().parents[3] / "deploy" / "sqlserver"


def _docker_reachable() -> bool:
    try:
        import docker

        docker.from_env(timeout=2).ping()
        return True
    except Exception:
        return False


@pytest.fixture(scope="session")
def mssql_server_dsn() -> Iterator[str]:
    """DSN of a real SQL Server: ``MSSQL_DSN``, else testcontainers' image, else skip."""
    try:
        import pyodbc  # noqa: F401
    except ImportError as exc:
        pytest.skip(f"pyodbc cannot load ({exc}): run make install (unixodbc, tdsodbc)")
    dsn = os.environ.get("MSSQL_DSN", "")
    if dsn:
        if not dsn.startswith("mssql"):
            pytest.skip(f"MSSQL_DSN is not a SQL Server URL ({dsn.split(':', 1)[0]}://…)")
        yield dsn
        return
    if not _docker_reachable():
        pytest.skip("no SQL Server here: MSSQL_DSN is not set and no Docker engine is reachable "
                    "for testcontainers' SQL Server image (the same behaviour ran on the "
                    "PostgreSQL stand-in; the T-SQL is snapshot-tested)")
    from testcontainers.community.mssql import SqlServerContainer

    with SqlServerContainer("mcr.microsoft.com/mssql/server:2022-latest",
                            dialect="mssql") as server:
        yield server.get_connection_url()


def apply_sql_file(engine: Engine, path: Path) -> None:
    """Run a ``GO``-separated T-SQL file."""
    batches = re.split(r"^GO\s*$", path.read_text(encoding="utf-8"), flags=re.MULTILINE)
    with engine.begin() as conn:
        for batch in batches:
            if batch.strip():
                conn.exec_driver_sql(batch)


@pytest.fixture
def mssql_dsn(mssql_server_dsn: str) -> Iterator[str]:
    """A fresh database on the SQL Server with both deploy/sqlserver files applied."""
    name = f"t_{uuid.uuid4().hex[:12]}"
    server = make_url(mssql_server_dsn)
    base = build_engine(settings_for(
        server.set(database="master").render_as_string(hide_password=False)))
    admin = base.execution_options(isolation_level="AUTOCOMMIT")  # CREATE DATABASE needs it
    with admin.connect() as conn:
        conn.exec_driver_sql(f"CREATE DATABASE [{name}]")
    dsn = server.set(database=name).render_as_string(hide_password=False)
    engine = build_engine(settings_for(dsn))
    apply_sql_file(engine, DEPLOY / "001_legacy_schema.sql")
    apply_sql_file(engine, DEPLOY / "002_sp_insert_reading_and_check_threshold.sql")
    engine.dispose()
    yield dsn
    with admin.connect() as conn:
        conn.exec_driver_sql(
            f"ALTER DATABASE [{name}] SET SINGLE_USER WITH ROLLBACK IMMEDIATE; "
            f"DROP DATABASE [{name}]")
    base.dispose()


@pytest.fixture(params=["standin", "mssql"])
def legacy_engine(request: pytest.FixtureRequest) -> Iterator[Engine]:
    """The legacy schema on the PostgreSQL stand-in, and on a real SQL Server when there is
    one (otherwise that case skips and says why)."""
    fixture = "standin_dsn" if request.param == "standin" else "mssql_dsn"
    engine = build_engine(settings_for(request.getfixturevalue(fixture)))
    yield engine
    engine.dispose()
