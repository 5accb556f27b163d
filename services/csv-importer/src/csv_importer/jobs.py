"""Import jobs and where they live: JSON documents in the namespaced ``csv-jobs`` KV bucket.

A job carries its resolved ``CsvOptions`` and the path of its spooled upload, so any restart of
the importer can pick it up; its ``checkpoint`` is the state after the last chunk whose publishes
were all acknowledged, which is where a resumed job starts again.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from enum import StrEnum
from typing import Any

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, ConfigDict, Field

from csv_importer.reading import CsvOptions
from tributary_runtime.kvwatch import kv_keys


class JobStatus(StrEnum):
    QUEUED = "queued"
    PROCESSING = "processing"
    COMPLETED = "completed"
    FAILED = "failed"
    CANCELLED = "cancelled"

    @property
    def finished(self) -> bool:
        return self in (JobStatus.COMPLETED, JobStatus.FAILED, JobStatus.CANCELLED)


class ErrorEntry(BaseModel):
    """One bad row (or cell): its line number in the file, the column, and why."""

    row: int = Field(description="Line number in the file (the header is line 1).")
    column: str | None = Field(default=None, description="Column of the bad cell, if one.")
    reason: str = Field(description="What is wrong with it.")


class Checkpoint(BaseModel):
    """Counters after the last chunk whose publishes were all acknowledged."""

    chunks_done: int = 0
    last_line: int = 0
    rows_processed: int = 0
    points_published: int = 0
    points_rejected: int = 0
    error_count: int = 0
    errors_kept: int = 0


class Job(BaseModel):
    """A CSV import: what was asked, where it is, and what it has done."""

    model_config = ConfigDict(extra="ignore")

    job_id: str
    status: JobStatus = JobStatus.QUEUED
    domain: str
    source_id: str | None = None
    filename: str = ""
    size_bytes: int = 0
    options: CsvOptions
    chunk_rows: int
    slice_rows: int
    spool_file: str
    created_at: datetime
    started_at: datetime | None = None
    updated_at: datetime
    finished_at: datetime | None = None
    rows_total: int | None = None
    rows_processed: int = 0
    points_published: int = 0
    points_rejected: int = 0
    error_count: int = 0
    errors: list[ErrorEntry] = Field(default_factory=list)
    percent: float | None = None
    rate_points_per_s: float | None = None
    eta_s: float | None = None
    reason: str | None = None
    resumed: int = 0
    checkpoint: Checkpoint = Field(default_factory=Checkpoint)

    def public(self) -> dict[str, Any]:
        """The job as the API shows it (without the server-side spool path)."""
        return self.model_dump(mode="json", exclude={"spool_file"})


def now() -> datetime:
    return datetime.now(UTC)


class JobStore:
    """Jobs in the ``csv-jobs`` bucket, one key per job id."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    async def put(self, job: Job) -> None:
        job.updated_at = now()
        await self._kv.put(job.job_id, job.model_dump_json().encode())

    async def get(self, job_id: str) -> Job | None:
        try:
            entry = await self._kv.get(job_id)
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        return Job.model_validate_json(entry.value)

    async def delete(self, job_id: str) -> None:
        await self._kv.purge(job_id)

    async def all(self) -> list[Job]:
        """Every job in the bucket (bounded by the retention cleanup at start)."""
        keys = await kv_keys(self._kv)
        jobs = await asyncio.gather(*(self.get(key) for key in keys))
        return [job for job in jobs if job is not None]
