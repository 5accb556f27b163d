"""Benchmark (not a test): PostgreSQL's CPU per row for the writer's two write paths.

    .venv/bin/python services/writer-postgres/bench/write_paths.py [--fetches 60] [--rounds 2]

- ``keyed``: binary COPY straight into ``data_points`` (``PointStore.write_rows``' usual path);
- ``staged``: COPY into the temporary staging table, then ``INSERT … SELECT … ON CONFLICT DO
  NOTHING`` (its path after a unique violation, i.e. a replay).

Each path writes the same new rows (fetches of 6,400 rows: 64 messages of 100 points, 16
sources × 10 streams) into its own freshly migrated database (keyed: one COPY per fetch;
staged: one transaction per fetch), and reports the PostgreSQL backend's CPU seconds
(utime+stime of its process in /proc) per row and rows/s. The databases are dropped at the
end. Runs alternate so both see the same machine.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

import asyncpg

from writer_postgres.migrate import migrate
from writer_postgres.store import _INSERT, COLUMNS, STAGING_TABLE, prepare_connection

Row = tuple[object, ...]


def backend_cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def fetches(count: int, start: datetime) -> list[list[Row]]:
    out = []
    for f in range(count):
        rows: list[Row] = []
        for m in range(64):
            sent = start + timedelta(seconds=f * 1000 + m)
            for i in range(100):
                rows.append((
                    sent + timedelta(microseconds=i), "infrastructure", f"src-{m % 16}",
                    f"m{i % 10}", 42.0 + i, "normal", None, None, None, "{}", "http", sent,
                    None, None, None,
                ))
        out.append(rows)
    return out


async def write(conn: asyncpg.Connection, path: str, rows: list[Row]) -> None:
    if path == "keyed":  # one statement, as PointStore.write_rows tries first
        await conn.copy_records_to_table("data_points", records=rows, columns=COLUMNS)
        return
    async with conn.transaction():
        await conn.copy_records_to_table(STAGING_TABLE, records=rows, columns=COLUMNS)
        await conn.execute(_INSERT)


async def run(admin_dsn: str, path: str, data: list[list[Row]]) -> None:
    base, _, _ = admin_dsn.rpartition("/")
    name = f"bench_paths_{uuid.uuid4().hex[:10]}"
    await migrate(f"{base}/{name}", 1, 1)
    conn = await asyncpg.connect(f"{base}/{name}")
    try:
        await prepare_connection(conn)
        pid = await conn.fetchval("SELECT pg_backend_pid()")
        cpu, wall = backend_cpu_seconds(pid), time.perf_counter()
        for rows in data:
            await write(conn, path, rows)
        wall, cpu = time.perf_counter() - wall, backend_cpu_seconds(pid) - cpu
    finally:
        await conn.close()
        admin = await asyncpg.connect(admin_dsn)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()
    rows = sum(len(r) for r in data)
    print(f"{path:7s} {rows:,} rows: PostgreSQL {cpu:.2f} CPU-s = {1e6 * cpu / rows:.2f} µs/row, "
          f"{rows / wall:,.0f} rows/s")


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fetches", type=int, default=60, help="fetches of 6,400 rows")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument(
        "--postgres-admin", default="postgresql://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()
    data = fetches(args.fetches, datetime.now(UTC).replace(microsecond=0) - timedelta(hours=5))
    for _ in range(args.rounds):
        for path in ("staged", "keyed"):
            await run(args.postgres_admin, path, data)


if __name__ == "__main__":
    asyncio.run(main())
