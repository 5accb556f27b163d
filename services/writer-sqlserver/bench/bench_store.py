"""Throughput of one writer-sqlserver transaction path (``LegacyStore.write``), not a test.

    .venv/bin/python services/writer-sqlserver/bench/bench_store.py [--dsn DSN] [--fetches 50]
        [--readings-per-fetch 2000] [--sensors 200]

Without ``--dsn`` it creates a throw-away database on the local PostgreSQL (the stand-in) and
drops it afterwards. With ``--dsn mssql://…`` it writes into that SQL Server database (legacy
tables created if missing: use a development database). Each fetch is one transaction of
``--readings-per-fetch`` readings: 90 % normal, 5 % critical, 5 % anomaly, timestamps moving
forward, then the same fetches are written again (the redelivery path: everything deduplicated).
Prints readings/s for both passes. Other work on the machine makes the figures noisy.
"""

from __future__ import annotations

import argparse
import time
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import create_engine, text

from tributary_contracts import PointClass
from writer_sqlserver.database import build_engine, create_schema
from writer_sqlserver.settings import WriterSqlServerSettings
from writer_sqlserver.store import LegacyStore, Reading

T0 = datetime(2026, 1, 1, tzinfo=UTC).replace(tzinfo=None)


def fetches(count: int, size: int, sensors: int) -> list[list[Reading]]:
    out = []
    for f in range(count):
        batch = []
        for i in range(size):
            n = f * size + i
            cls = (PointClass.CRITICAL if n % 20 == 0 else
                   PointClass.ANOMALY if n % 20 == 1 else PointClass.NORMAL)
            ts = T0 + timedelta(milliseconds=n)
            batch.append(Reading(n % sensors + 1, float(n % 97), ts, cls, "bench", ts))
        out.append(batch)
    return out


def run(store: LegacyStore, work: list[list[Reading]]) -> float:
    started = time.perf_counter()
    for batch in work:
        store.write(batch)
    return sum(len(b) for b in work) / (time.perf_counter() - started)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dsn", default="")
    parser.add_argument("--fetches", type=int, default=50)
    parser.add_argument("--readings-per-fetch", type=int, default=2000)
    parser.add_argument("--sensors", type=int, default=200)
    args = parser.parse_args()
    admin_dsn = "postgresql://postgres@127.0.0.1:5432/postgres"
    dsn, throwaway = args.dsn, ""
    if not dsn:
        throwaway = f"bench_sqlserver_{uuid.uuid4().hex[:8]}"
        admin = create_engine(admin_dsn.replace("postgresql:", "postgresql+psycopg2:"),
                              isolation_level="AUTOCOMMIT")
        with admin.connect() as conn:
            conn.execute(text(f'CREATE DATABASE "{throwaway}"'))
        dsn = admin_dsn.rsplit("/", 1)[0] + "/" + throwaway
    try:
        engine = build_engine(WriterSqlServerSettings(mssql_dsn=dsn))  # type: ignore[arg-type]
        create_schema(engine)
        work = fetches(args.fetches, args.readings_per_fetch, args.sensors)
        first = run(LegacyStore(engine), work)
        again = run(LegacyStore(engine), work)
        engine.dispose()
        print(f"database: {engine.dialect.name}; {args.fetches} fetches x "
              f"{args.readings_per_fetch} readings, {args.sensors} sensors")
        print(f"  first write : {first:10.0f} readings/s")
        print(f"  redelivered : {again:10.0f} readings/s (all duplicates)")
    finally:
        if throwaway:
            with admin.connect() as conn:
                conn.execute(text(f'DROP DATABASE IF EXISTS "{throwaway}" WITH (FORCE)'))
            admin.dispose()


if __name__ == "__main__":
    main()
