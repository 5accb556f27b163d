"""Benchmark (not a test): a generated N-row × 3-column CSV through a ``python -m csv_importer``
process into JetStream; prints points/s (upload done → job completed) and the importer's peak
RSS (VmHWM). Runs in its own bus namespace, removed afterwards.

    .venv/bin/python services/csv-importer/bench/import_bench.py [--rows 1000000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import signal
import subprocess
import sys
import tempfile
import time
import uuid
from pathlib import Path

import httpx
import nats

from tributary_access.apikeys import ApiKeyStore, Role
from tributary_contracts import API_KEYS_BUCKET, Namespace, ensure_jetstream

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repo root, for tests.*
from tests.host import free_port, vm_mib
from tests.streams import drop_namespace


def write_csv(path: Path, rows: int) -> None:
    with path.open("w") as out:
        out.write("timestamp,temperature,humidity,pressure\n")
        step = 100_000
        for start in range(0, rows, step):
            out.write(
                "".join(
                    f"{1_700_000_000 + i},{20 + (i % 100) / 10},{50 + (i % 37) / 3},"
                    f"{1000 + (i % 50) / 7}\n"
                    for i in range(start, min(start + step, rows))
                )
            )


async def main(rows: int, nats_url: str) -> None:
    prefix = f"bench{uuid.uuid4().hex[:8]}"
    ns = Namespace(prefix)
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    await ensure_jetstream(js, ns)
    store = ApiKeyStore(await js.key_value(ns.bucket(API_KEYS_BUCKET)))
    key = await store.create(Role.SOURCE_WRITER)
    port = free_port()
    with tempfile.TemporaryDirectory() as tmp:
        csv = Path(tmp) / "bench.csv"
        write_csv(csv, rows)
        size_mb = csv.stat().st_size / 1e6
        env = {
            **os.environ,
            "NATS_URL": nats_url,
            "BUS_PREFIX": prefix,
            "PORT": str(port),
            "SPOOL_DIR": str(Path(tmp) / "spool"),
            "LOG_LEVEL": "WARNING",
        }
        proc = subprocess.Popen([sys.executable, "-m", "csv_importer"], env=env)
        try:
            url = f"http://127.0.0.1:{port}"
            async with httpx.AsyncClient(base_url=url, timeout=600) as client:
                for _ in range(100):
                    try:
                        if (await client.get("/ready")).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    await asyncio.sleep(0.1)
                t0 = time.monotonic()
                with csv.open("rb") as f:
                    reply = await client.post(
                        "/ingest/csv",
                        files={"file": ("bench.csv", f, "text/csv")},
                        data={"source_id": "bench", "domain": "infrastructure"},
                        headers={"X-API-Key": key},
                    )
                reply.raise_for_status()
                job_id = reply.json()["job_id"]
                t_uploaded = time.monotonic()
                job = {}
                for _ in range(36_000):  # ≤ 1 h
                    job = (
                        await client.get(f"/ingest/csv/jobs/{job_id}", headers={"X-API-Key": key})
                    ).json()
                    if job["status"] in ("completed", "failed", "cancelled"):
                        break
                    await asyncio.sleep(0.1)
                t_done = time.monotonic()
            rss = vm_mib(proc.pid).get("VmHWM", 0.0)
        finally:
            proc.send_signal(signal.SIGTERM)
            proc.wait(timeout=30)
    await drop_namespace(js, ns)
    await nc.close()
    points = job["points_published"]
    print(f"file: {rows:,} rows × 3 columns, {size_mb:.0f} MB; job {job['status']}")
    print(f"upload (stream to spool): {t_uploaded - t0:.1f} s")
    print(
        f"import to JetStream: {points:,} points in {t_done - t_uploaded:.1f} s = "
        f"{points / (t_done - t_uploaded):,.0f} points/s"
    )
    print(f"importer peak RSS (VmHWM): {rss:.0f} MB")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    args = parser.parse_args()
    asyncio.run(main(args.rows, args.nats_url))
