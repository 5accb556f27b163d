"""Benchmark (not a test): a generated CSV through the whole fleet into PostgreSQL.

    .venv/bin/python services/csv-importer/bench/e2e_bench.py [--rows 1000000] [--columns 3]

Starts ``deploy/local/fleet.py`` (writer-postgres, classifier, csv-importer; the other gateways
are skipped so they take no CPU) in its own bus namespace and database, uploads a generated
wide CSV (``--rows`` × ``--columns`` points) with the CLI's streaming upload, and reports:

- **end-to-end points/s**: points ÷ (upload start → the last row counted in ``data_points``,
  from writer-postgres' ``points_written`` counter, checked with ``count(*)`` at the end);
- the import job's own rate (upload → job completed: every point acknowledged by JetStream);
- peak RSS (VmHWM) and CPU seconds (utime+stime from /proc) of every service, so it shows
  where the time goes.

Removes its streams, buckets, database and files at the end (also after a failure).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import sys
import tempfile
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import nats

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))
from tests.e2e.fleet_process import FleetProcess  # noqa: E402
from tests.host import cpu_seconds, vm_mib  # noqa: E402

SERVICES = ("csv-importer", "classifier", "writer-postgres")
SKIPPED = ("gateway-http", "gateway-ws", "gateway-mqtt", "writer-sqlserver")
MAX_WAIT_SECONDS = 3600


def write_csv(path: Path, rows: int, columns: int) -> None:
    """``timestamp`` (unix s, one per row) + ``columns`` numeric columns."""
    with path.open("w") as out:
        out.write("timestamp," + ",".join(f"v{j}" for j in range(columns)) + "\n")
        step = 100_000
        for start in range(0, rows, step):
            out.write(
                "".join(
                    f"{1_700_000_000 + i},"
                    + ",".join(f"{(i * (j + 3)) % 1000 / 10}" for j in range(columns))
                    + "\n"
                    for i in range(start, min(start + step, rows))
                )
            )


def proc_stat(pid: int) -> tuple[float, float, float]:
    """(cpu seconds, VmRSS MB, VmHWM MB) of ``pid`` (zeros when it is gone)."""
    mem = vm_mib(pid)
    return cpu_seconds(pid), mem.get("VmRSS", 0.0), mem.get("VmHWM", 0.0)


def metric(url: str, name: str) -> float:
    try:
        with urllib.request.urlopen(url + "/metrics", timeout=5) as reply:
            for line in reply.read().decode().splitlines():
                if line.startswith(name + " "):
                    return float(line.split()[1])
    except OSError:
        pass
    return -1.0


class PatientFleet(FleetProcess):
    """``FleetProcess`` that also accepts a fleet whose services became healthy after
    fleet.py's own 60 s wait (a busy 2-core machine), by polling their /health itself."""

    def start(self, timeout: float = 300.0) -> PatientFleet:  # type: ignore[override]
        self._spawn()
        deadline = time.monotonic() + timeout
        self._read_until(deadline, need_ready=False)
        while time.monotonic() < deadline and self.admin_key:
            try:
                for name in SERVICES:
                    urllib.request.urlopen(self.url(name) + "/health", timeout=2)
                return self
            except OSError:
                time.sleep(1)
        self.stop()
        raise RuntimeError("fleet did not become ready:\n" + "".join(self.lines[-40:]))


async def drop_everything(nats_url: str, prefix: str, admin_dsn: str, dsn: str) -> None:
    """Every stream (and so bucket) whose name holds ``prefix``, and the database."""
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    for info in await js.streams_info():
        if prefix.lower() in info.config.name.lower():  # streams: upper-cased prefix
            await js.delete_stream(info.config.name)
    await nc.close()
    conn = await asyncpg.connect(admin_dsn)
    await conn.execute(f'DROP DATABASE IF EXISTS "{dsn.rpartition("/")[2]}" WITH (FORCE)')
    await conn.close()


def run(args: argparse.Namespace) -> dict[str, Any]:
    prefix = f"csvb{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="tributary-csv-e2e-"))
    dsn = f"{args.postgres_base}/bench_{prefix}"
    fleet = PatientFleet(
        prefix, dsn, args.nats_url, skip=SKIPPED,
        extra_env={"SPOOL_DIR": str(work / "spool"), "LOG_LEVEL": "WARNING"},
    )  # fmt: skip
    try:
        csv = work / "bench.csv"
        write_csv(csv, args.rows, args.columns)
        points = args.rows * args.columns
        print(f"file: {args.rows:,} rows × {args.columns} columns = {points:,} points, "
              f"{csv.stat().st_size / 1e6:.0f} MB", flush=True)  # fmt: skip
        fleet.start()
        pids = fleet.child_pids()
        cpu0 = {name: proc_stat(pids[name])[0] for name in SERVICES}
        writer = fleet.url("writer-postgres")
        written0 = metric(writer, "writer_postgres_points_written_total")
        key = fleet.admin_key
        with httpx.Client(base_url=fleet.url("csv-importer"), timeout=600,
                          headers={"X-API-Key": key}) as client:  # fmt: skip
            t0 = time.monotonic()
            with csv.open("rb") as f:
                reply = client.post(
                    "/ingest/csv",
                    files={"file": ("bench.csv", f, "text/csv")},
                    data={"source_id": "csv-e2e-bench", "domain": "infrastructure"},
                )
            reply.raise_for_status()
            job_id = reply.json()["job_id"]
            t_uploaded = time.monotonic()
            t_job = None
            job: dict[str, Any] = {}
            written = 0.0
            peak_rss = 0.0
            while time.monotonic() - t0 < MAX_WAIT_SECONDS:
                if t_job is None:
                    job = client.get(f"/ingest/csv/jobs/{job_id}").json()
                    if job["status"] in ("completed", "failed", "cancelled"):
                        t_job = time.monotonic()
                written = metric(writer, "writer_postgres_points_written_total") - written0
                peak_rss = max(peak_rss, proc_stat(pids["csv-importer"])[1])
                print(f"  t={time.monotonic() - t0:6.1f}s job {job.get('status')} "
                      f"{job.get('points_published', 0):>10,} published  {written:>12,.0f} rows",
                      flush=True)  # fmt: skip
                if t_job is not None and written >= points:
                    break
                time.sleep(1.0)
            t_rows = time.monotonic()
        stats = {name: proc_stat(pids[name]) for name in SERVICES}
        rows = asyncio.run(count_rows(dsn))
    finally:
        fleet.stop()
        asyncio.run(drop_everything(args.nats_url, prefix, args.postgres_admin, dsn))
        shutil.rmtree(work, ignore_errors=True)
    elapsed = t_rows - t0
    return {
        "points": points,
        "rows_in_postgres": rows,
        "job_status": job.get("status"),
        "upload_s": t_uploaded - t0,
        "job_s": (t_job or t_rows) - t0,
        "e2e_s": elapsed,
        "e2e_points_per_s": rows / elapsed,
        "job_points_per_s": points / ((t_job or t_rows) - t0),
        "importer_peak_rss_mb": max(peak_rss, stats["csv-importer"][2]),
        "cpu_s": {name: stats[name][0] - cpu0[name] for name in SERVICES},
        "peak_rss_mb": {name: stats[name][2] for name in SERVICES},
    }


async def count_rows(dsn: str) -> int:
    conn = await asyncpg.connect(dsn)
    try:
        return int(await conn.fetchval("SELECT count(*) FROM data_points"))
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--columns", type=int, default=3)
    parser.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    parser.add_argument("--postgres-base", default="postgresql://postgres@127.0.0.1:5432")
    parser.add_argument(
        "--postgres-admin", default="postgresql://postgres@127.0.0.1:5432/postgres"
    )
    r = run(parser.parse_args())
    print(f"\nrows in PostgreSQL: {r['rows_in_postgres']:,} of {r['points']:,} points "
          f"(job {r['job_status']})")  # fmt: skip
    print(f"upload {r['upload_s']:.1f} s; job completed (all on JetStream) after "
          f"{r['job_s']:.1f} s = {r['job_points_per_s']:,.0f} points/s")  # fmt: skip
    print(f"END TO END: {r['rows_in_postgres']:,} rows in {r['e2e_s']:.1f} s = "
          f"{r['e2e_points_per_s']:,.0f} points/s")  # fmt: skip
    print(f"importer peak RSS: {r['importer_peak_rss_mb']:.0f} MB")
    print(f"load average now: {os.getloadavg()[0]:.1f} (2 cores, shared machine)")
    print("service          CPU s   CPU % of wall   peak RSS MB")
    for name in SERVICES:
        cpu = r["cpu_s"][name]
        print(f"{name:<16} {cpu:6.1f}   {100 * cpu / r['e2e_s']:6.0f} %       "
              f"{r['peak_rss_mb'][name]:6.0f}")  # fmt: skip


if __name__ == "__main__":
    main()
