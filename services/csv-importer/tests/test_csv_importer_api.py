"""The importer against the real NATS: upload → job → PointBundles on the namespaced dp.raw."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import nats.errors
import orjson
import pytest
from csv_importer.jobs import JobStore

from tributary_access.apikeys import Role
from tributary_contracts import (
    DEFAULT_PARTITIONS,
    DP_RAW,
    DP_REJECTED,
    MSG_ID_HEADER,
    PointBundle,
    RejectedInput,
    batch_msg_id,
    bundle_msg_id,
    partition_of,
)

pytestmark = pytest.mark.integration

SEED_CSV = (
    "timestamp,temperature,humidity,pressure\n"
    "1708900000.0,23.5,65.2,1013.25\n"
    "1708900001.0,23.6,65.1,1013.24\n"
    "1708900002.0,23.7,65.0,1013.23\n"
)


async def raw_points(read_stream: Any) -> list[tuple[str, str, str, float, datetime]]:
    """(subject, source, stream, value, ts) of every point on DP_RAW, checking each bundle."""
    out = []
    for message in await read_stream(DP_RAW):
        bundle = PointBundle.model_validate_json(message.data)
        ids = []
        for batch in bundle.batches:
            assert batch.transport == "csv"
            assert partition_of(batch.domain, batch.source_id, DEFAULT_PARTITIONS) == (
                bundle.partition
            )
            ids.append(
                batch_msg_id(
                    batch.domain, batch.source_id, ((p.stream_id, p.ts) for p in batch.points)
                )
            )
            out += [
                (message.subject, batch.source_id, p.stream_id, p.value, p.ts)
                for p in batch.points
            ]
        assert message.headers[MSG_ID_HEADER] == bundle_msg_id(ids)
    return out


def wide_rows(n: int, start: int = 1708900000) -> str:
    lines = ["timestamp,a,b,c"]
    lines += [f"{start + i},{i},{i * 0.5},{-i}" for i in range(n)]
    return "\n".join(lines) + "\n"


async def test_upload_replies_202_with_a_job_that_completes(
    start_importer: Any, read_stream: Any
) -> None:
    async with start_importer() as imp:
        reply = await imp.upload(SEED_CSV)
        assert reply.status_code == 202, reply.text
        body = reply.json()
        assert body["status"] == "queued" and len(body["job_id"]) == 32
        job = await imp.finished(body["job_id"])

    assert job["status"] == "completed", job
    assert (job["rows_processed"], job["points_published"], job["points_rejected"]) == (3, 9, 0)
    assert (job["rows_total"], job["percent"], job["errors"]) == (3, 100.0, [])
    points = await raw_points(read_stream)
    subject = imp.ns.raw_partition_subject(
        "infrastructure", partition_of("infrastructure", "src-1", DEFAULT_PARTITIONS)
    )
    ts = [datetime.fromtimestamp(1708900000 + i, UTC) for i in range(3)]
    assert points == [
        (subject, "src-1", "temperature", 23.5, ts[0]),
        (subject, "src-1", "humidity", 65.2, ts[0]),
        (subject, "src-1", "pressure", 1013.25, ts[0]),
        (subject, "src-1", "temperature", 23.6, ts[1]),
        (subject, "src-1", "humidity", 65.1, ts[1]),
        (subject, "src-1", "pressure", 1013.24, ts[1]),
        (subject, "src-1", "temperature", 23.7, ts[2]),
        (subject, "src-1", "humidity", 65.0, ts[2]),
        (subject, "src-1", "pressure", 1013.23, ts[2]),
    ]


async def test_many_chunks_publish_every_point_once_in_batches_of_500(
    start_importer: Any, read_stream: Any
) -> None:
    async with start_importer(chunk_rows=1000, slice_rows=300) as imp:
        reply = await imp.upload(wide_rows(5000))
        job = await imp.finished(reply.json()["job_id"])

    assert job["status"] == "completed", job
    assert job["checkpoint"]["chunks_done"] == 5
    assert (job["rows_processed"], job["points_published"]) == (5000, 15000)
    points = await raw_points(read_stream)
    expected = []
    for i in range(5000):
        ts = datetime.fromtimestamp(1708900000 + i, UTC)
        expected += [("a", float(i), ts), ("b", i * 0.5, ts), ("c", float(-i), ts)]
    assert [(p[2], p[3], p[4]) for p in points] == expected
    bundles = [PointBundle.model_validate_json(m.data) for m in await read_stream(DP_RAW)]
    assert max(len(b.points) for bundle in bundles for b in bundle.batches) == 500
    # no linger: a slice (300 rows × 3 points) fills one bundle and goes out at once
    assert max(sum(len(b.points) for b in bundle.batches) for bundle in bundles) == 900


async def test_bad_rows_are_recorded_with_row_numbers_and_the_rest_is_published(
    start_importer: Any, read_stream: Any
) -> None:
    text = (
        "timestamp,a,b\n"
        "2026-03-01T00:00:00Z,1,2\n"
        "not-a-time,3,4\n"
        "2026-03-01T00:00:02Z,x,5\n"
        "2026-03-01T00:00:03Z,6,\n"
        "2026-03-01T00:00:04Z,7,8\n"
    )
    async with start_importer() as imp:
        reply = await imp.upload(text)
        job = await imp.finished(reply.json()["job_id"])

    assert job["status"] == "completed"
    assert job["errors"] == [
        {
            "row": 3,
            "column": "timestamp",
            "reason": "timestamp 'not-a-time' is not ISO 8601 (e.g. 2026-02-25T21:00:00Z) "
            "or epoch seconds",
        },
        {"row": 4, "column": "a", "reason": "a must be a number, got the text 'x'"},
        {"row": 5, "column": "b", "reason": "b is required"},
    ]
    assert (job["rows_processed"], job["points_published"], job["points_rejected"]) == (5, 6, 4)
    assert job["error_count"] == 3
    assert [(p[2], p[3]) for p in await raw_points(read_stream)] == [
        ("a", 1.0),
        ("b", 2.0),
        ("b", 5.0),
        ("a", 6.0),
        ("a", 7.0),
        ("b", 8.0),
    ]
    rejected = [RejectedInput.model_validate_json(m.data) for m in await read_stream(DP_REJECTED)]
    assert [(e.index, e.stream_id) for r in rejected for e in r.rejected] == [
        (3, "timestamp"),
        (4, "a"),
        (5, "b"),
    ]
    assert {r.transport for r in rejected} == {"csv"}


async def test_only_the_first_errors_are_kept_but_all_are_counted(start_importer: Any) -> None:
    text = "timestamp,a\n" + "".join(f"{1708900000 + i},bad\n" for i in range(250))
    async with start_importer(max_errors_kept=100) as imp:
        job = await imp.finished((await imp.upload(text, value_columns="a")).json()["job_id"])

    assert job["status"] == "completed"
    assert (job["error_count"], len(job["errors"]), job["points_rejected"]) == (250, 100, 250)
    assert [e["row"] for e in job["errors"]] == list(range(2, 102))


async def test_long_format_publishes_one_batch_per_source_in_its_partition(
    start_importer: Any, read_stream: Any
) -> None:
    text = (
        "timestamp;stream_id;value;source_id\n"
        "1708900000;cpu;1,5;host a\n"
        "1708900000;cpu;2,5;host.b\n"
    )
    async with start_importer() as imp:
        reply = await imp.upload(text.encode("latin-1"), source_id=None, decimal=",")
        assert reply.status_code == 202, reply.text
        job = await imp.finished(reply.json()["job_id"])

    assert job["status"] == "completed", job
    def subject(source: str) -> str:
        partition = partition_of("infrastructure", source, DEFAULT_PARTITIONS)
        return imp.ns.raw_partition_subject("infrastructure", partition)

    assert sorted((p[0], p[1], p[3]) for p in await raw_points(read_stream)) == sorted(
        [(subject("host a"), "host a", 1.5), (subject("host.b"), "host.b", 2.5)]
    )


@pytest.mark.parametrize(
    ("fields", "status", "field"),
    [
        ({"domain": ""}, 422, "domain"),
        ({"domain": "Bad Domain"}, 422, "domain"),
        ({"timestamp_column": "time"}, 422, "timestamp_column"),
        ({"value_columns": "nope"}, 422, "value_columns"),
    ],
)
async def test_bad_form_fields_are_refused_naming_the_field(
    start_importer: Any, fields: dict[str, str], status: int, field: str
) -> None:
    async with start_importer() as imp:
        reply = await imp.upload(SEED_CSV, **fields)
        listed = await imp.client.get("/ingest/csv/jobs", headers={"X-API-Key": imp.key})

    assert reply.status_code == status and reply.json()["field"] == field, reply.text
    assert listed.json()["jobs"] == []
    assert list(imp.settings.spool_dir.iterdir()) == []


async def test_auth_is_required_and_ingest_or_admin_keys_may_upload(start_importer: Any) -> None:
    async with start_importer() as imp:
        missing = await imp.upload(SEED_CSV, key=None)
        unknown = await imp.upload(SEED_CSV, key="trb_nope")
        admin = await imp.upload(SEED_CSV, key=await imp.keys.create(Role.ADMIN, "a"))
        not_found = await imp.client.get(
            "/ingest/csv/jobs/" + "0" * 32, headers={"X-API-Key": imp.key}
        )
        if admin.status_code == 202:
            await imp.finished(admin.json()["job_id"])

    assert (missing.status_code, unknown.status_code, admin.status_code) == (401, 401, 202)
    assert not_found.status_code == 404


async def test_a_body_that_is_not_multipart_is_refused(start_importer: Any) -> None:
    async with start_importer() as imp:
        reply = await imp.client.post(
            "/ingest/csv",
            content=SEED_CSV,
            headers={"X-API-Key": imp.key, "Content-Type": "text/csv"},
        )

    assert reply.status_code == 415
    assert "multipart/form-data" in reply.json()["error"]


async def test_an_upload_larger_than_the_limit_is_refused_and_not_kept(start_importer: Any) -> None:
    async with start_importer(max_upload_bytes=2048) as imp:
        reply = await imp.upload(wide_rows(500))

    assert reply.status_code == 413
    assert list(imp.settings.spool_dir.iterdir()) == []


async def test_jobs_are_listed_newest_first(start_importer: Any) -> None:
    async with start_importer() as imp:
        first = (await imp.upload(SEED_CSV)).json()["job_id"]
        second = (await imp.upload(SEED_CSV, source_id="src-2")).json()["job_id"]
        await imp.finished(first)
        await imp.finished(second)
        listed = await imp.client.get("/ingest/csv/jobs", headers={"X-API-Key": imp.key})

    jobs = listed.json()["jobs"]
    assert [j["job_id"] for j in jobs] == [second, first]
    assert {j["status"] for j in jobs} == {"completed"}


async def test_delete_cancels_a_running_job(start_importer: Any) -> None:
    async with start_importer(chunk_rows=100, slice_rows=100) as imp:
        job_id = (await imp.upload(wide_rows(100_000))).json()["job_id"]
        cancelled = await imp.client.delete(
            f"/ingest/csv/jobs/{job_id}", headers={"X-API-Key": imp.key}
        )
        job = await imp.finished(job_id)
        again = await imp.client.delete(
            f"/ingest/csv/jobs/{job_id}", headers={"X-API-Key": imp.key}
        )

    assert cancelled.status_code == 200
    assert job["status"] == "cancelled" and job["rows_processed"] < 100_000
    assert again.status_code == 409
    assert list(imp.settings.spool_dir.iterdir()) == []


async def test_an_unfinished_job_resumes_at_start_from_its_checkpoint(
    start_importer: Any, read_stream: Any
) -> None:
    async with start_importer(chunk_rows=1000) as imp:
        job_id = (await imp.upload(wide_rows(3000))).json()["job_id"]
        await imp.finished(job_id)
    kv = await imp.js.key_value(imp.ns.bucket("csv-jobs"))
    stored = orjson.loads((await kv.get(job_id)).value)
    # As if the importer died after its first chunk: the file is back, the job unfinished.
    spool = imp.settings.spool_dir / f"{job_id}.csv"
    spool.write_text(wide_rows(3000))
    stored["status"] = "processing"
    stored["checkpoint"] = {
        "chunks_done": 1,
        "last_line": 1001,
        "rows_processed": 1000,
        "points_published": 3000,
        "points_rejected": 0,
        "error_count": 0,
        "errors_kept": 0,
    }
    await kv.put(job_id, orjson.dumps(stored))

    async with start_importer(chunk_rows=1000) as imp:
        job = await imp.finished(job_id)

    assert job["status"] == "completed" and job["resumed"] == 1
    assert (job["rows_processed"], job["points_published"]) == (3000, 9000)
    # The replayed chunks had the same Nats-Msg-Ids: JetStream kept every point once.
    points = await raw_points(read_stream)
    assert len(points) == 9000 and len({(p[2], p[4]) for p in points}) == 9000


async def test_job_state_writes_lost_to_a_bus_hiccup_are_retried(
    start_importer: Any, read_stream: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A NATS restart while the job's state is written (the bucket put times out) must not
    leave the job ``processing`` or fail it: every state write is retried until it lands."""
    put = JobStore.put
    calls = 0

    async def put_failing_every_other_time(self: JobStore, job: Any) -> None:
        nonlocal calls
        calls += 1  # 1: the upload's (succeeds); then start, chunk, end each fail once
        if calls % 2 == 0:
            raise nats.errors.TimeoutError
        await put(self, job)

    monkeypatch.setattr(JobStore, "put", put_failing_every_other_time)
    async with start_importer(chunk_rows=1000) as imp:
        job = await imp.finished((await imp.upload(wide_rows(2000))).json()["job_id"])

    assert job["status"] == "completed", job
    assert (job["rows_processed"], job["points_published"]) == (2000, 6000)
    assert calls == 9  # upload + (start, 2 chunks, end) × (failed + retried)
    points = await raw_points(read_stream)
    assert len(points) == 6000 and len({(p[2], p[4]) for p in points}) == 6000


async def test_health_ready_and_metrics(start_importer: Any) -> None:
    async with start_importer() as imp:
        health = await imp.client.get("/health")
        ready = await imp.client.get("/ready")
        job = await imp.finished((await imp.upload(SEED_CSV)).json()["job_id"])
        metrics = await imp.client.get("/metrics")

    assert health.status_code == 200 and ready.json() == {
        "ready": True,
        "checks": {"nats": True, "stream": True},
    }
    assert job["status"] == "completed"
    assert "csv_importer_points_published_total" in metrics.text
