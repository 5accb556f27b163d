"""Benchmark (not a test): the writer's cost per *fetch* when fetches are small, as single
readings from many devices make them (a classified bundle of ~15 points).

    .venv/bin/python services/writer-postgres/bench/small_fetches.py [--fetches 1500] [--rows 15]

Three ways of storing the same kind of new rows through an asyncpg pool of one connection,
alternated for ``--rounds`` rounds in one freshly migrated database:

- ``tx+reset``: the COPY inside ``conn.transaction()`` (BEGIN, COPY, COMMIT) and asyncpg's default
  pool reset on release (``RESET ALL``, ``UNLISTEN *``, … one more round trip) — the writer
  before b86b337;
- ``reset``: the COPY alone, with asyncpg's default reset;
- ``store``: ``PointStore.write_rows`` on a pool made as the service makes it (``reset=
  keep_session``).

Each reports this process's CPU (utime+stime) and the PostgreSQL backend's (/proc) per fetch,
and fetches/s. The database is dropped at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import resource
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
from write_paths import Row, backend_cpu_seconds

from writer_postgres.migrate import migrate
from writer_postgres.store import COLUMNS, PointStore, keep_session, prepare_connection


def own_cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


async def copy_in_transaction(pool: asyncpg.Pool, rows: list[Row]) -> None:
    async with pool.acquire() as conn, conn.transaction():
        await conn.copy_records_to_table("data_points", records=rows, columns=COLUMNS)


async def copy_alone(pool: asyncpg.Pool, rows: list[Row]) -> None:
    async with pool.acquire() as conn:
        await conn.copy_records_to_table("data_points", records=rows, columns=COLUMNS)


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fetches", type=int, default=1500, help="fetches per variant and round")
    parser.add_argument("--rows", type=int, default=15, help="rows per fetch")
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument(
        "--postgres-admin", default="postgresql://postgres@127.0.0.1:5432/postgres"
    )
    args = parser.parse_args()
    base, _, _ = args.postgres_admin.rpartition("/")
    name = f"bench_fetches_{uuid.uuid4().hex[:10]}"
    dsn = f"{base}/{name}"
    await migrate(dsn, 1, 1)
    pools = {
        "tx+reset": await asyncpg.create_pool(dsn, min_size=1, max_size=1, init=prepare_connection),
        "reset": await asyncpg.create_pool(dsn, min_size=1, max_size=1, init=prepare_connection),
        "store": await asyncpg.create_pool(
            dsn, min_size=1, max_size=1, init=prepare_connection, reset=keep_session
        ),
    }
    store = PointStore(pools["store"])
    writes: dict[str, Callable[[list[Row]], Awaitable[Any]]] = {
        "tx+reset": lambda rows: copy_in_transaction(pools["tx+reset"], rows),
        "reset": lambda rows: copy_alone(pools["reset"], rows),
        "store": store.write_rows,
    }
    start, n = datetime.now(UTC).replace(microsecond=0) - timedelta(hours=5), 0
    try:
        backends = {v: await pool.fetchval("SELECT pg_backend_pid()") for v, pool in pools.items()}
        for _ in range(args.rounds):
            for variant, write in writes.items():
                own, backend = own_cpu_seconds(), backend_cpu_seconds(backends[variant])
                wall = time.perf_counter()
                for _ in range(args.fetches):
                    n += 1
                    rows: list[Row] = [
                        (start + timedelta(seconds=n, microseconds=i), "infrastructure",
                         f"src-{i}", "m", float(i), "normal", None, None, None, "{}", "http",
                         start, None, None, None)
                        for i in range(args.rows)
                    ]  # fmt: skip
                    await write(rows)
                wall = time.perf_counter() - wall
                own = own_cpu_seconds() - own
                backend = backend_cpu_seconds(backends[variant]) - backend
                print(
                    f"{variant:9s} {args.fetches / wall:7,.0f} fetches/s  writer "
                    f"{1e6 * own / args.fetches:6.1f} µs  backend "
                    f"{1e6 * backend / args.fetches:6.1f} µs per fetch of {args.rows} rows"
                )
    finally:
        for pool in pools.values():
            await pool.close()
        admin = await asyncpg.connect(args.postgres_admin)
        await admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        await admin.close()


if __name__ == "__main__":
    asyncio.run(main())
