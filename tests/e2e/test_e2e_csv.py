"""CSV upload → csv-importer → JetStream → classifier → writer-postgres → rows, as processes."""

from __future__ import annotations

import asyncio
import os
import signal
import time
from datetime import UTC, datetime
from typing import Any

import asyncpg
import httpx
import pytest

from tests.e2e.fleet_process import FleetProcess
from tests.e2e.rows import rows_for

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

SEED_CSV = (
    "timestamp,temperature,humidity,pressure\n"
    "1708900000.0,23.5,65.2,1013.25\n"
    "1708900001.0,23.6,65.1,1013.24\n"
    "1708900002.0,23.7,65.0,1013.23\n"
)
FINISHED = ("completed", "failed", "cancelled")


async def count_rows(dsn: str, source_id: str) -> int:
    try:
        conn = await asyncpg.connect(dsn)
    except (OSError, asyncpg.InvalidCatalogNameError):
        return 0
    try:
        return int(
            await conn.fetchval("SELECT count(*) FROM data_points WHERE source_id = $1", source_id)
        )
    except asyncpg.UndefinedTableError:
        return 0
    finally:
        await conn.close()


async def upload(fleet: FleetProcess, csv: str, **fields: str) -> str:
    async with httpx.AsyncClient(base_url=fleet.url("csv-importer"), timeout=60) as client:
        reply = await client.post(
            "/ingest/csv",
            files={"file": ("data.csv", csv.encode(), "text/csv")},
            data={"domain": "infrastructure", **fields},
            headers={"X-API-Key": fleet.admin_key},
        )
    assert reply.status_code == 202, reply.text
    return str(reply.json()["job_id"])


async def job_when(
    fleet: FleetProcess, job_id: str, done: Any = None, timeout: float = 60.0
) -> dict[str, Any]:
    """The job once ``done(job)`` (default: finished) or at timeout; the importer may be
    restarting in between (connection errors are waited out)."""
    done = done or (lambda j: j["status"] in FINISHED)
    deadline = time.monotonic() + timeout
    job: dict[str, Any] = {}
    async with httpx.AsyncClient(base_url=fleet.url("csv-importer"), timeout=5) as client:
        while time.monotonic() < deadline:
            try:
                reply = await client.get(
                    f"/ingest/csv/jobs/{job_id}", headers={"X-API-Key": fleet.admin_key}
                )
                if reply.status_code == 200:
                    job = reply.json()
                    if done(job):
                        return job
            except httpx.TransportError:
                pass
            await asyncio.sleep(0.05)
    return job


async def test_the_seed_example_becomes_three_streams_of_rows(fleet: FleetProcess) -> None:
    job_id = await upload(fleet, SEED_CSV, source_id="weather-01")
    job = await job_when(fleet, job_id)
    assert job["status"] == "completed", job
    assert (job["rows_processed"], job["points_published"], job["errors"]) == (3, 9, [])

    rows = await rows_for(fleet.postgres_dsn, "weather-01", want=9, order_by="time, stream_id")
    ts = [datetime.fromtimestamp(1708900000 + i, UTC) for i in range(3)]
    assert [(r["time"], r["stream_id"], r["value"]) for r in rows] == [
        (ts[0], "humidity", 65.2),
        (ts[0], "pressure", 1013.25),
        (ts[0], "temperature", 23.5),
        (ts[1], "humidity", 65.1),
        (ts[1], "pressure", 1013.24),
        (ts[1], "temperature", 23.6),
        (ts[2], "humidity", 65.0),
        (ts[2], "pressure", 1013.23),
        (ts[2], "temperature", 23.7),
    ]
    assert {(r["domain"], r["transport"]) for r in rows} == {("infrastructure", "csv")}


async def test_a_file_with_bad_rows_completes_with_exact_errors_and_every_good_row_stored(
    fleet: FleetProcess,
) -> None:
    csv = (
        "timestamp;cpu;mem\n"
        "2026-03-01T00:00:00Z;1,5;10\n"
        "2026-03-01T00:00:01Z;;11\n"
        "03/01/2026;2;12\n"
        "2026-03-01T00:00:03Z;abc;13\n"
        "2026-03-01T00:00:04Z;3;14;99\n"
        "2026-03-01T00:00:05Z;4;15\n"
    )
    job_id = await upload(fleet, csv, source_id="bad-rows-01", decimal=",")
    job = await job_when(fleet, job_id)

    assert job["status"] == "completed", job
    assert job["errors"] == [
        {"row": 3, "column": "cpu", "reason": "cpu is required"},
        {
            "row": 4,
            "column": "timestamp",
            "reason": "timestamp '03/01/2026' is not ISO 8601 (e.g. 2026-02-25T21:00:00Z) "
            "or epoch seconds",
        },
        {"row": 5, "column": "cpu", "reason": "cpu must be a number, got the text 'abc'"},
        {"row": 6, "column": None, "reason": "expected 3 fields, saw 4"},
    ]
    assert (job["rows_processed"], job["points_published"], job["points_rejected"]) == (6, 6, 6)
    rows = await rows_for(
        fleet.postgres_dsn, "bad-rows-01", want=6, order_by="time, stream_id"
    )
    t = datetime(2026, 3, 1, tzinfo=UTC)
    assert [(int((r["time"] - t).total_seconds()), r["stream_id"], r["value"]) for r in rows] == [
        (0, "cpu", 1.5),
        (0, "mem", 10.0),
        (1, "mem", 11.0),
        (3, "mem", 13.0),
        (5, "cpu", 4.0),
        (5, "mem", 15.0),
    ]


async def test_kill_9_of_the_importer_mid_job_still_stores_every_point_once(
    fleet: FleetProcess,
) -> None:
    rows = 200_000  # 4 chunks of 50,000 rows
    csv = "timestamp,a,b,c\n" + "".join(
        f"{1_750_000_000 + i},{i},{i + 0.5},{-i}\n" for i in range(rows)
    )
    job_id = await upload(fleet, csv, source_id="kill-9-src")
    before = await job_when(fleet, job_id, lambda j: j["checkpoint"]["chunks_done"] >= 1)
    assert before["status"] == "processing", before
    os.kill(fleet.child_pids()["csv-importer"], signal.SIGKILL)

    job = await job_when(fleet, job_id, timeout=120)
    assert job["status"] == "completed", job
    assert job["resumed"] == 1
    assert (job["rows_processed"], job["points_published"]) == (rows, 3 * rows)
    deadline = time.monotonic() + 120
    stored = 0
    while time.monotonic() < deadline:
        stored = await count_rows(fleet.postgres_dsn, "kill-9-src")
        if stored >= 3 * rows:
            break
        await asyncio.sleep(0.5)
    await asyncio.sleep(1.0)  # a duplicate would need time to arrive: there must be none
    assert await count_rows(fleet.postgres_dsn, "kill-9-src") == 3 * rows
    conn = await asyncpg.connect(fleet.postgres_dsn)
    try:
        summary = await conn.fetchrow(
            "SELECT count(DISTINCT (stream_id, time)) AS keys, sum(value) AS total "
            "FROM data_points WHERE source_id = 'kill-9-src'"
        )
    finally:
        await conn.close()
    assert summary["keys"] == 3 * rows
    assert summary["total"] == pytest.approx(sum(i + 0.5 for i in range(rows)))
