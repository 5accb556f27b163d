"""Benchmark (not a test): a ~1 GB CSV through ``tributary csv upload --wait`` into a
``python -m csv_importer`` process publishing to JetStream; the importer's RSS is sampled every
second against the rows processed, to show it does not grow with the file.

    .venv/bin/python services/csv-importer/bench/big_file.py [--size-gb 1.0] [--note-chars 160]

The file: ``timestamp`` (unix s), three numeric columns (the imported streams) and a ``note``
text column of ``--note-chars`` characters that is read and parsed with every chunk but not
imported (``value_columns`` names the three), so a 1 GB file is a few million rows and the run
takes minutes on a shared 2-core machine (``--note-chars 0``: numbers only, ~20M
rows). It goes to /tmp and is deleted afterwards, as are the spool, the bus namespace's streams
(the points on DP_RAW) and its buckets. ``df -h`` of the file system is printed before and after.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import httpx
import nats

from tributary_access.apikeys import ApiKeyStore, Role
from tributary_contracts import API_KEYS_BUCKET, Namespace, ensure_jetstream

sys.path.insert(0, str(Path(__file__).resolve().parents[3]))  # the repo root, for tests.*
from tests.host import free_port, vm_mib

MAX_SECONDS = 3 * 3600


def write_csv(path: Path, size_bytes: int, note_chars: int) -> int:
    """Rows until the file holds ``size_bytes``; returns the number of rows."""
    note = ("lorem ipsum dolor sit amet " * (note_chars // 27 + 1))[:note_chars]
    rows = 0
    with path.open("w") as out:
        out.write("timestamp,temperature,humidity,pressure,note\n")
        while out.tell() < size_bytes:
            out.write(
                "".join(
                    f"{1_600_000_000 + i},{20 + (i % 100) / 10},{50 + (i % 37) / 3},"
                    f"{1000 + (i % 50) / 7},{note}{i % 10}\n"
                    for i in range(rows, rows + 100_000)
                )
            )
            rows += 100_000
    return rows


def df(path: str) -> str:
    return subprocess.run(["df", "-h", path], capture_output=True, text=True).stdout.strip()


async def prepare(nats_url: str, prefix: str) -> str:
    nc = await nats.connect(nats_url)
    try:
        js = nc.jetstream()
        ns = Namespace(prefix)
        await ensure_jetstream(js, ns)
        store = ApiKeyStore(await js.key_value(ns.bucket(API_KEYS_BUCKET)))
        return await store.create(Role.SOURCE_WRITER, "big-file bench")
    finally:
        await nc.close()


async def drop(nats_url: str, prefix: str) -> list[str]:
    nc = await nats.connect(nats_url)
    js = nc.jetstream()
    dropped = []
    for info in await js.streams_info():
        if prefix.lower() in info.config.name.lower():  # streams: upper-cased prefix
            await js.delete_stream(info.config.name)
            dropped.append(f"{info.config.name} ({info.state.bytes / 1e9:.2f} GB)")
    await nc.close()
    return dropped


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--size-gb", type=float, default=1.0)
    parser.add_argument("--note-chars", type=int, default=160)
    parser.add_argument("--nats-url", default=os.environ.get("NATS_URL", "nats://127.0.0.1:4222"))
    args = parser.parse_args()

    prefix = f"csvbig{uuid.uuid4().hex[:8]}"
    work = Path(tempfile.mkdtemp(prefix="tributary-csv-big-", dir="/tmp"))
    print("before:\n" + df("/work"), flush=True)
    key = asyncio.run(prepare(args.nats_url, prefix))
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    samples: list[tuple[float, int, float]] = []  # (t, rows processed, RSS MB)
    importer = None
    try:
        csv = work / "big.csv"
        t = time.monotonic()
        rows = write_csv(csv, int(args.size_gb * 1e9), args.note_chars)
        size = csv.stat().st_size
        print(f"file: {size / 1e9:.2f} GB, {rows:,} rows, {3 * rows:,} points "
              f"(written in {time.monotonic() - t:.0f} s)", flush=True)  # fmt: skip
        env = {
            **os.environ,
            "NATS_URL": args.nats_url,
            "BUS_PREFIX": prefix,
            "PORT": str(port),
            "SPOOL_DIR": str(work / "spool"),
            "LOG_LEVEL": "WARNING",
        }
        importer = subprocess.Popen([sys.executable, "-m", "csv_importer"], env=env)
        for _ in range(1200):
            try:
                if httpx.get(url + "/ready", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.25)
        t0 = time.monotonic()
        cli = subprocess.Popen(
            [sys.executable, "-m", "tributary_operator.cli", "csv", "upload", str(csv),
             "--source", "big-file", "--domain", "infrastructure", "--wait",
             "--value-columns", "temperature,humidity,pressure", "--url", url,
             "--poll-interval", "2", "--timeout", str(MAX_SECONDS)],
            env={**os.environ, "TRIBUTARY_API_KEY": key},
            stdout=subprocess.PIPE, text=True,
        )  # fmt: skip
        cli_peak = [0.0]
        stop = threading.Event()

        def sample() -> None:
            job_id = None
            with httpx.Client(base_url=url, headers={"X-API-Key": key}, timeout=10) as client:
                while not stop.is_set():
                    rss = vm_mib(importer.pid).get("VmRSS", 0.0)
                    cli_peak[0] = max(cli_peak[0], vm_mib(cli.pid).get("VmHWM", 0.0))
                    done = 0
                    try:
                        if job_id is None:
                            jobs = client.get("/ingest/csv/jobs").json()["jobs"]
                            job_id = jobs[0]["job_id"] if jobs else None
                        if job_id is not None:
                            done = int(client.get(f"/ingest/csv/jobs/{job_id}").json()
                                       ["rows_processed"])  # fmt: skip
                    except (httpx.HTTPError, KeyError, ValueError):
                        pass
                    samples.append((time.monotonic() - t0, done, rss))
                    stop.wait(1.0)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        out, _ = cli.communicate(timeout=MAX_SECONDS + 60)
        elapsed = time.monotonic() - t0
        stop.set()
        sampler.join(timeout=15)
        peak = vm_mib(importer.pid).get("VmHWM", 0.0)
        print(f"CLI exit {cli.returncode}; job {out.strip()}", flush=True)
        print(f"upload + import: {elapsed:.0f} s = {3 * rows / elapsed:,.0f} points/s to JetStream")
        print(f"importer peak RSS (VmHWM): {peak:.0f} MB; CLI peak RSS: {cli_peak[0]:.0f} MB")
        print("importer RSS by progress (rows processed → RSS MB):")
        for fraction in (0.0, 0.1, 0.25, 0.5, 0.75, 0.9, 1.0):
            target = fraction * rows
            sample_at = next((s for s in samples if s[1] >= target), samples[-1])
            print(f"  {fraction:4.0%} t={sample_at[0]:6.0f}s rows={sample_at[1]:>11,} "
                  f"RSS={sample_at[2]:5.0f} MB")  # fmt: skip
        with (Path(__file__).parent / f"big_file_rss_note{args.note_chars}.csv").open("w") as f:
            f.write("t_s,rows_processed,rss_mb\n")
            f.writelines(f"{t:.1f},{r},{m:.1f}\n" for t, r, m in samples)
    finally:
        if importer is not None:
            importer.send_signal(signal.SIGTERM)
            try:
                importer.wait(timeout=30)
            except subprocess.TimeoutExpired:
                importer.kill()
                importer.wait()
        dropped = asyncio.run(drop(args.nats_url, prefix))
        shutil.rmtree(work, ignore_errors=True)
        print("deleted streams: " + ", ".join(dropped))
        print("after:\n" + df("/work"))


if __name__ == "__main__":
    main()
