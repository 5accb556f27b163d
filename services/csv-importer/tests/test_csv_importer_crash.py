"""kill -9 of a ``python -m csv_importer`` process mid-job: restarted, the job completes with
every point on the bus exactly once (the replayed chunk dedups by Nats-Msg-Id)."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import orjson
import pytest
from nats.js import JetStreamContext

from tests.host import free_port
from tributary_access.apikeys import ApiKeyStore, Role
from tributary_contracts import API_KEYS_BUCKET, CSV_JOBS_BUCKET, DP_RAW, Namespace, PointBundle

pytestmark = pytest.mark.integration

ROWS = 200_000


def start_process(env: dict[str, str]) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [sys.executable, "-m", "csv_importer"],
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )


async def wait_healthy(url: str, proc: subprocess.Popen[bytes], timeout: float = 90.0) -> None:
    deadline = time.monotonic() + timeout
    async with httpx.AsyncClient(base_url=url) as client:
        while time.monotonic() < deadline:
            assert proc.poll() is None, "the importer exited"
            try:
                if (await client.get("/ready")).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.1)
    raise AssertionError("importer not ready")


async def stored_job(js: JetStreamContext, ns: Namespace, job_id: str) -> dict[str, Any]:
    kv = await js.key_value(ns.bucket(CSV_JOBS_BUCKET))
    return dict(orjson.loads((await kv.get(job_id)).value))


async def test_kill_9_mid_job_then_restart_completes_with_every_point_once(
    servers: Any, bus_prefix: str, jetstream: JetStreamContext, tmp_path: Path
) -> None:
    ns = Namespace(bus_prefix)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {
        **os.environ,
        "NATS_URL": servers.nats_url,
        "BUS_PREFIX": bus_prefix,
        "PORT": str(port),
        "SPOOL_DIR": str(tmp_path / "spool"),
        "CHUNK_ROWS": "5000",
        "LOG_FORMAT": "json",
    }
    key = await ApiKeyStore(await jetstream.key_value(ns.bucket(API_KEYS_BUCKET))).create(
        Role.SOURCE_WRITER, "crash-test"
    )
    csv = "timestamp,a,b,c\n" + "".join(
        f"{1_700_000_000 + i},{i},{i + 0.25},{-i}\n" for i in range(ROWS)
    )

    proc = start_process(env)
    try:
        await wait_healthy(url, proc)
        async with httpx.AsyncClient(base_url=url, timeout=60) as client:
            reply = await client.post(
                "/ingest/csv",
                files={"file": ("big.csv", csv.encode(), "text/csv")},
                data={"source_id": "crash-src", "domain": "infrastructure"},
                headers={"X-API-Key": key},
            )
        assert reply.status_code == 202, reply.text
        job_id = reply.json()["job_id"]

        deadline = time.monotonic() + 60
        job = await stored_job(jetstream, ns, job_id)
        while job["checkpoint"]["chunks_done"] < 3 and time.monotonic() < deadline:
            await asyncio.sleep(0.01)
            job = await stored_job(jetstream, ns, job_id)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=10)
        killed_at = await stored_job(jetstream, ns, job_id)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)
    assert killed_at["status"] == "processing", "the job finished before the kill"
    assert 0 < killed_at["checkpoint"]["rows_processed"] < ROWS

    proc = start_process(env)
    try:
        await wait_healthy(url, proc)
        deadline = time.monotonic() + 120
        job = await stored_job(jetstream, ns, job_id)
        while job["status"] != "completed" and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            job = await stored_job(jetstream, ns, job_id)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=20)

    assert job["status"] == "completed", job
    assert job["resumed"] == 1
    assert (job["rows_processed"], job["points_published"]) == (ROWS, 3 * ROWS)

    stream = ns.stream(DP_RAW)
    info = await jetstream.stream_info(stream)
    keys = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        bundle = PointBundle.model_validate_json((await jetstream.get_msg(stream, seq)).data)
        keys += [
            (p.stream_id, int(p.ts.timestamp()), p.value) for b in bundle.batches for p in b.points
        ]
    expected = [
        (name, 1_700_000_000 + i, value)
        for i in range(ROWS)
        for name, value in (("a", float(i)), ("b", i + 0.25), ("c", float(-i)))
    ]
    assert len(keys) == len(expected)  # nothing twice
    assert sorted(keys) == sorted(expected)  # nothing lost
