"""``tributary-ml-batch --once`` as a process: a summary line, or one clear error line."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.integration
ML_BATCH = Path(sys.executable).with_name("tributary-ml-batch")


def _run(dsn: str, servers: Any, prefix: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "POSTGRES_DSN": dsn, "NATS_URL": servers.nats_url, "BUS_PREFIX": prefix,
           "LOG_FORMAT": "json"}
    return subprocess.run(
        [str(ML_BATCH), "--once"], env=env, capture_output=True, text=True,
        timeout=60, check=False,
    )


async def test_cli_once_prints_a_summary(
    migrated_dsn: str, servers: Any, bus_prefix: str, jetstream: Any, insert_points: Any
) -> None:
    from datetime import UTC, datetime, timedelta

    now = datetime.now(UTC)
    await insert_points(
        migrated_dsn,
        [("health", "p1", "hr", now - timedelta(seconds=10 * i), 60.0 + i % 3, None)
         for i in range(20)],
    )
    done = _run(migrated_dsn, servers, bus_prefix)
    assert done.returncode == 0, done.stderr
    assert "streams=1 predictions=1 inserted=1" in done.stdout
    assert "published=1" in done.stdout


async def test_cli_once_names_the_missing_schema(
    database_dsn: str, servers: Any, bus_prefix: str, jetstream: Any
) -> None:
    import asyncpg

    from writer_postgres.migrate import ensure_database

    await ensure_database(database_dsn)  # a database without writer-postgres's tables
    conn = await asyncpg.connect(database_dsn)
    await conn.close()
    done = _run(database_dsn, servers, bus_prefix)
    assert done.returncode == 1
    assert "the predictions schema is missing" in done.stderr
    assert "start writer-postgres" in done.stderr
