"""Schema migrations: versioned SQL files applied in order at start, recorded, idempotent.

Several replicas may start at once: the database is created by whoever gets there first (a
concurrent creator is tolerated), and migrations run under a PostgreSQL advisory lock, so exactly
one replica applies each file and the others find it recorded in ``schema_migrations``.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from importlib import resources
from urllib.parse import unquote, urlsplit

import asyncpg
import structlog

from writer_postgres.partitions import ensure_partitions

log = structlog.get_logger(__name__)

MIGRATION_LOCK = 0x7472_6962_0001
"""Advisory lock key held while migrating (any bigint no other code of the fleet uses)."""

_FILE = re.compile(r"^(\d{4})_([a-z0-9_]+)\.sql$")


@dataclass(frozen=True)
class Migration:
    version: int
    name: str
    sql: str

    @property
    def checksum(self) -> str:
        return hashlib.sha256(self.sql.encode()).hexdigest()


def load_migrations() -> list[Migration]:
    """The packaged ``migrations/NNNN_name.sql`` files, by version."""
    found = []
    for entry in resources.files("writer_postgres").joinpath("migrations").iterdir():
        match = _FILE.match(entry.name)
        if match:
            found.append(Migration(int(match[1]), match[2], entry.read_text(encoding="utf-8")))
    found.sort(key=lambda m: m.version)
    versions = [m.version for m in found]
    if len(set(versions)) != len(versions):
        raise RuntimeError(f"two migration files share a version: {versions}")
    return found


def database_name(dsn: str) -> str:
    """Database a DSN points at (libpq default: the user name)."""
    parts = urlsplit(dsn)
    name = unquote(parts.path.lstrip("/"))
    return name or unquote(parts.username or "postgres")


def _quote_ident(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


async def ensure_database(dsn: str) -> bool:
    """Create the DSN's database if it does not exist; True when this call created it."""
    try:
        conn = await asyncpg.connect(dsn)
    except asyncpg.InvalidCatalogNameError:
        pass
    else:
        await conn.close()
        return False
    name = database_name(dsn)
    admin = await asyncpg.connect(dsn, database="postgres")
    try:
        await admin.execute(f"CREATE DATABASE {_quote_ident(name)}")
    except (asyncpg.DuplicateDatabaseError, asyncpg.UniqueViolationError):
        return False  # another replica created it between our check and our CREATE
    finally:
        await admin.close()
    log.info("database created", database=name)
    return True


async def apply_migrations(conn: asyncpg.Connection) -> list[int]:
    """Apply every migration not yet recorded, each in its own transaction; returns versions."""
    await conn.execute(
        """
        CREATE TABLE IF NOT EXISTS schema_migrations (
            version    integer PRIMARY KEY,
            name       text        NOT NULL,
            checksum   text        NOT NULL,
            applied_at timestamptz NOT NULL DEFAULT now()
        )
        """
    )
    recorded = {
        r["version"]: r["checksum"]
        for r in await conn.fetch("SELECT version, checksum FROM schema_migrations")
    }
    applied = []
    for migration in load_migrations():
        if migration.version in recorded:
            if recorded[migration.version] != migration.checksum:
                # Never re-run an applied file; a changed one needs a new version instead.
                log.warning("applied migration file changed since", version=migration.version,
                            migration=migration.name)
            continue
        async with conn.transaction():
            await conn.execute(migration.sql)
            await conn.execute(
                "INSERT INTO schema_migrations (version, name, checksum) VALUES ($1, $2, $3)",
                migration.version, migration.name, migration.checksum,
            )
        applied.append(migration.version)
        log.info("migration applied", version=migration.version, migration=migration.name)
    return applied


async def storage_mode(conn: asyncpg.Connection) -> str:
    """``timescale`` (hypertable), ``partitioned`` (native) or ``plain`` for data_points."""
    if await conn.fetchval(
        "SELECT 1 FROM pg_partitioned_table WHERE partrelid = 'data_points'::regclass"
    ):
        return "partitioned"
    # timescaledb_information exists only with the extension: query it only then.
    if await conn.fetchval("SELECT 1 FROM pg_extension WHERE extname = 'timescaledb'") and (
        await conn.fetchval(
            "SELECT 1 FROM timescaledb_information.hypertables"
            " WHERE hypertable_name = 'data_points'"
        )
    ):
        return "timescale"
    return "plain"


async def migrate(dsn: str, months_back: int = 3, months_ahead: int = 3) -> list[int]:
    """Create the database if needed, apply pending migrations, ensure partitions exist."""
    await ensure_database(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        await conn.execute("SELECT pg_advisory_lock($1)", MIGRATION_LOCK)
        try:
            applied = await apply_migrations(conn)
            mode = await storage_mode(conn)
            if mode == "partitioned":
                await ensure_partitions(conn, months_back, months_ahead)
        finally:
            await conn.execute("SELECT pg_advisory_unlock($1)", MIGRATION_LOCK)
    finally:
        await conn.close()
    log.info("schema ready", storage=mode, applied=applied)
    return applied
