"""Running import jobs: file → chunks → points → ``PointBatch``es in ``PointBundle``s on
``dp.raw.<domain>.part.<p>`` → checkpoint.

A chunk's points are handed to the importer's ``Coalescer`` a slice at a time (so only one slice
of points is in memory; no linger: a slice's batches fill bundles up to their bounds and go out at
once), then every PubAck of the chunk is awaited; only then does the job's ``checkpoint`` move
past the chunk and get written to the ``csv-jobs`` bucket. A job that stops anywhere (crash,
kill -9, bus outage) starts again after its checkpoint; the chunk it was in is published again
with the same batches (cut the same way: ``chunk_rows`` and ``slice_rows`` are stored in the job),
so mostly the same bundles and ``Nats-Msg-Id``s: JetStream drops the repeats within its duplicate
window and the databases' unique key drops any point that comes back in another bundle.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from pathlib import Path

import pandas as pd
import structlog

from csv_importer.encode import encode_points
from csv_importer.jobs import Checkpoint, ErrorEntry, Job, JobStatus, JobStore, now
from csv_importer.metrics import (
    BUDGET_WAIT,
    ERRORS,
    JOBS_FINISHED,
    JOBS_RESUMED,
    JOBS_RUNNING,
    POINTS_PUBLISHED,
    POINTS_REJECTED,
    ROWS_RECEIVED,
)
from csv_importer.reading import (
    BadLines,
    ChunkResult,
    RowError,
    SourcePoints,
    convert_chunk,
    leftover_bad_lines,
    read_chunks,
)
from csv_importer.upload import remove_spool_file, spool_file_present
from tributary_access.ratelimit import IngestLimiter
from tributary_ingest.batches import PublishOutcome
from tributary_ingest.coalesce import Coalescer, settle
from tributary_runtime.delivery import backoff_delay
from tributary_runtime.publish import PublishError

log = structlog.get_logger("csv_importer")

RETRY_BACKOFF_MAX_SECONDS = 30.0


def retry_delay(attempt: int) -> float:
    """Wait after the ``attempt``-th failed try (0-based): 0.5 s, doubling, at most 30 s."""
    return backoff_delay(attempt + 1, 0.5, RETRY_BACKOFF_MAX_SECONDS)


class JobFailure(Exception):
    """The job cannot go on (unreadable file, bus down past every retry): it fails."""


class JobCancelled(Exception):
    """DELETE asked the job to stop."""


class JobRunner:
    """Runs jobs as tasks of this process, at most ``max_concurrent_jobs`` at a time."""

    def __init__(
        self,
        store: JobStore,
        publisher: Coalescer,
        *,
        max_concurrent_jobs: int,
        max_errors_kept: int,
        publish_timeout: float,
        publish_retries: int,
        limiter: IngestLimiter | None = None,
    ) -> None:
        self._store = store
        self._limiter = limiter  # each point spends its source's budget, as on every gateway
        self._publisher = publisher
        self._slots = asyncio.Semaphore(max_concurrent_jobs)
        self._max_errors = max_errors_kept
        self._timeout = publish_timeout
        self._retries = publish_retries
        self._tasks: dict[str, asyncio.Task[None]] = {}
        self._cancel: dict[str, asyncio.Event] = {}

    def start(self, job: Job) -> None:
        """Process ``job`` in the background (queued until a slot is free)."""
        self._cancel[job.job_id] = asyncio.Event()
        task = asyncio.create_task(self._run(job), name=f"csv-job-{job.job_id}")
        self._tasks[job.job_id] = task
        task.add_done_callback(lambda _: self._forget(job.job_id))

    async def resume(self, retention: timedelta) -> None:
        """At start: pick up every unfinished job of the bucket; forget finished ones older than
        ``retention``."""
        oldest = now() - retention
        for job in sorted(await self._store.all(), key=lambda j: j.created_at):
            if job.status.finished:
                if (job.finished_at or job.updated_at) < oldest:
                    await self._store.delete(job.job_id)
                continue
            job.resumed += 1
            JOBS_RESUMED.inc()
            log.info("job_resumed", job_id=job.job_id, chunks_done=job.checkpoint.chunks_done)
            self.start(job)

    def _forget(self, job_id: str) -> None:
        self._tasks.pop(job_id, None)
        self._cancel.pop(job_id, None)

    def running(self, job_id: str) -> bool:
        return job_id in self._tasks

    async def cancel(self, job_id: str, timeout: float = 10.0) -> bool:
        """Ask a job of this process to stop and wait (bounded) until it has; False when it is
        not running here."""
        event, task = self._cancel.get(job_id), self._tasks.get(job_id)
        if event is None or task is None:
            return False
        event.set()
        with contextlib.suppress(asyncio.TimeoutError, asyncio.CancelledError):
            await asyncio.wait_for(asyncio.shield(task), timeout)
        return True

    async def stop(self) -> None:
        """Shutdown: stop every task; their jobs stay unfinished in the bucket and resume at the
        next start."""
        tasks = list(self._tasks.values())
        for task in tasks:
            task.cancel()
        if tasks:
            await asyncio.wait(tasks, timeout=10)

    async def _run(self, job: Job) -> None:
        bound = structlog.contextvars.bound_contextvars(job_id=job.job_id)
        with bound:
            async with self._slots:
                JOBS_RUNNING.inc()
                try:
                    await self._run_with_slot(job)
                finally:
                    JOBS_RUNNING.dec()

    async def _run_with_slot(self, job: Job) -> None:
        cancel = self._cancel[job.job_id]
        try:
            if cancel.is_set():
                raise JobCancelled
            job.status = JobStatus.PROCESSING
            job.started_at = job.started_at or now()
            await self._save(job)
            log.info("job_started", resumed=job.resumed, chunks_done=job.checkpoint.chunks_done)
            await self._process_with_retries(job, cancel)
            job.status = JobStatus.COMPLETED
            job.rows_total = job.rows_processed
            job.percent, job.eta_s = 100.0, 0.0
        except JobCancelled:
            job.status = JobStatus.CANCELLED
            job.reason = "cancelled by DELETE"
        except JobFailure as exc:
            job.status = JobStatus.FAILED
            job.reason = str(exc)
            ERRORS.labels("job", "failed").inc()
            log.warning("job_failed", reason=job.reason)
        except asyncio.CancelledError:
            log.info("job_interrupted", chunks_done=job.checkpoint.chunks_done)
            raise
        except Exception as exc:
            job.status = JobStatus.FAILED
            job.reason = f"internal error: {type(exc).__name__}: {exc}"[:500]
            ERRORS.labels("job", "unexpected").inc()
            log.exception("job_crashed")
        job.finished_at = now()
        JOBS_FINISHED.labels(job.status.value).inc()
        log.info(
            "job_finished",
            status=job.status.value,
            rows=job.rows_processed,
            points=job.points_published,
            rejected=job.points_rejected,
        )
        try:
            await self._save(job)
        except PublishError:  # the bus stayed away: the job resumes at the next start
            return
        remove_spool_file(job.spool_file)

    async def _save(self, job: Job) -> None:
        """Write the job's state to its bucket, retrying while the bus is briefly away (a NATS
        restart): a lost write would leave the job ``processing`` until the importer restarts.
        ``PublishError`` after ``publish_retries`` retries."""
        for attempt in range(self._retries + 1):
            try:
                await self._store.put(job)
                return
            except Exception as exc:
                ERRORS.labels("jobs", type(exc).__name__).inc()
                if attempt == self._retries:
                    log.warning("job_state_not_saved", attempts=attempt + 1, error=repr(exc))
                    raise PublishError("job_state", f"job state not saved: {exc!r}") from exc
                delay = retry_delay(attempt)
                log.warning("job_state_retry", attempt=attempt + 1, error=repr(exc), retry_in=delay)
                await asyncio.sleep(delay)

    async def _process_with_retries(self, job: Job, cancel: asyncio.Event) -> None:
        for attempt in range(self._retries + 1):
            try:
                await self._process(job, cancel)
                return
            except PublishError as exc:
                ERRORS.labels("publish", exc.error_type).inc()
                if attempt == self._retries:
                    raise JobFailure(
                        f"JetStream did not acknowledge chunk {job.checkpoint.chunks_done + 1} "
                        f"after {self._retries + 1} attempts: {exc}"
                    ) from None
                delay = retry_delay(attempt)
                log.warning("chunk_not_acked", attempt=attempt + 1, error=str(exc), retry_in=delay)
                try:
                    await asyncio.wait_for(cancel.wait(), delay)
                except TimeoutError:
                    pass
                if cancel.is_set():
                    raise JobCancelled from None

    async def _process(self, job: Job, cancel: asyncio.Event) -> None:
        """One pass from the checkpoint to the end of the file."""
        restore(job)
        path = Path(job.spool_file)
        if not spool_file_present(path):
            raise JobFailure(f"the uploaded file is gone from the spool directory ({path})")
        bad_lines = BadLines()
        started = time.monotonic()
        base = job.checkpoint.model_copy()
        received_at = job.created_at
        chunks = read_chunks(path, job.options, job.chunk_rows, bad_lines)
        index = 0
        while True:
            try:
                frame = next(chunks, None)
            except UnicodeDecodeError as exc:
                raise JobFailure(
                    f"the file is not valid {job.options.encoding} near byte {exc.start} of a "
                    "chunk; upload it again with encoding=latin-1"
                ) from None
            except (pd.errors.ParserError, ValueError, OSError) as exc:
                raise JobFailure(f"the file cannot be read as CSV: {exc}"[:500]) from None
            if frame is None:
                break
            index += 1
            if index <= job.checkpoint.chunks_done:
                continue  # acknowledged before the restart
            results = convert_chunk(
                frame,
                job.options,
                job.source_id,
                bad_lines,
                job.checkpoint.last_line + 1,
                job.slice_rows,
            )
            await self._publish_chunk(job, results, received_at, cancel)
            job.checkpoint.chunks_done = index
            progress(job, started, base)
            await self._save(job)
            if cancel.is_set():
                raise JobCancelled
        tail = leftover_bad_lines(bad_lines, job.checkpoint.last_line, job.options, job.source_id)
        if tail.rows:
            await self._publish_chunk(job, iter([tail]), received_at, cancel)
        progress(job, started, base)

    async def _publish_chunk(
        self, job: Job, results: Iterator[ChunkResult], received_at: datetime, cancel: asyncio.Event
    ) -> None:
        """Publish every slice of one chunk, await all its PubAcks, then count it into the job
        and its checkpoint (a cancel stops after the current slice, counting what was sent)."""
        submitted: list[asyncio.Future[PublishOutcome]] = []
        tally = Tally()
        publisher = self._publisher
        for result in results:
            for source, points in result.points.items():
                rejections = result.rejections.pop(source, [])
                await self._spend(job, source, points, received_at)
                submitted.append(
                    publisher.submit_encoded(
                        job.domain,
                        source,
                        encode_points(
                            job.domain, source, received_at, points, publisher.max_batch_bytes
                        ),
                        publisher.rejection_messages(job.domain, source, received_at, rejections),
                    )
                )
                tally.points_published += len(points)
            for source, rejections in result.rejections.items():
                submitted.append(publisher.submit(job.domain, source, received_at, [], rejections))
            tally.rows += result.rows
            tally.points_rejected += result.points_rejected
            tally.errors += result.errors
            tally.last_line = max(tally.last_line, result.last_line)
            await asyncio.sleep(0)  # let the HTTP side answer between slices
            if cancel.is_set():
                break
        deadline = asyncio.get_running_loop().time() + self._timeout
        try:
            for future in submitted:
                await settle(future, deadline)
        finally:
            for future in submitted:
                future.cancel()  # abandoned after a failure (no effect once answered)
        apply(job, tally, self._max_errors)

    async def _spend(
        self, job: Job, source: str, points: SourcePoints, received_at: datetime
    ) -> None:
        """Wait until the source's live/backfill budgets cover these points (the rate limits
        apply per point on every path, CSV included: a job slows to the budget)."""
        if self._limiter is None:
            return
        cutoff = received_at - timedelta(seconds=self._limiter.backfill_age_seconds)
        cutoff_text = cutoff.strftime("%Y-%m-%dT%H:%M:%SZ")  # the points' ts text format
        backfill = sum(1 for ts in points.ts if ts < cutoff_text)
        waited = await self._limiter.spend_points(
            job.domain, source, len(points) - backfill, backfill
        )
        BUDGET_WAIT.inc(waited)


@dataclass
class Tally:
    """What one chunk did, counted into the job once all its publishes are acknowledged."""

    rows: int = 0
    points_published: int = 0
    points_rejected: int = 0
    errors: list[RowError] = field(default_factory=list)
    last_line: int = 0


def restore(job: Job) -> None:
    """Counters back to the checkpoint (what a previous pass did after it is redone)."""
    cp = job.checkpoint
    job.rows_processed = cp.rows_processed
    job.points_published = cp.points_published
    job.points_rejected = cp.points_rejected
    job.error_count = cp.error_count
    job.errors = job.errors[: cp.errors_kept]


def error_label(error: RowError) -> str:
    """Bounded metrics label of a row error: row (wrong field count), timestamp or value."""
    if error.column is None:
        return "row"
    return "timestamp" if error.reason.startswith("timestamp") else "value"


def apply(job: Job, tally: Tally, max_errors: int) -> None:
    """Count an acknowledged chunk into the job and move its checkpoint past it."""
    job.rows_processed += tally.rows
    job.points_published += tally.points_published
    job.points_rejected += tally.points_rejected
    job.error_count += len(tally.errors)
    room = max_errors - len(job.errors)
    if room > 0:
        job.errors += [
            ErrorEntry(row=e.row, column=e.column, reason=e.reason) for e in tally.errors[:room]
        ]
    ROWS_RECEIVED.inc(tally.rows)
    POINTS_PUBLISHED.inc(tally.points_published)
    for error in tally.errors:
        POINTS_REJECTED.labels(error_label(error)).inc()
    job.checkpoint = Checkpoint(
        chunks_done=job.checkpoint.chunks_done,
        last_line=max(job.checkpoint.last_line, tally.last_line),
        rows_processed=job.rows_processed,
        points_published=job.points_published,
        points_rejected=job.points_rejected,
        error_count=job.error_count,
        errors_kept=len(job.errors),
    )


def progress(job: Job, started: float, base: Checkpoint) -> None:
    """Percent, rate and ETA from the counters (rates over this pass only)."""
    elapsed = max(time.monotonic() - started, 1e-6)
    job.rate_points_per_s = round((job.points_published - base.points_published) / elapsed, 1)
    if job.rows_total:
        job.percent = round(min(job.rows_processed / job.rows_total, 1.0) * 100, 2)
        rows_rate = (job.rows_processed - base.rows_processed) / elapsed
        remaining = max(job.rows_total - job.rows_processed, 0)
        job.eta_s = round(remaining / rows_rate, 1) if rows_rate > 0 else None
