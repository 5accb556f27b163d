"""Settings of the CSV importer (env vars, prefix-free; see the README's table)."""

from __future__ import annotations

from pathlib import Path

from pydantic import Field

from tributary_access.guard import GuardSettings
from tributary_contracts.ports import SERVICE_PORTS
from tributary_ingest.bus import GatewayBusSettings
from tributary_runtime.settings import ServiceSettings


class CsvImporterSettings(GatewayBusSettings, GuardSettings, ServiceSettings):
    """What the CSV importer reads from the environment."""

    port: int = Field(
        default=SERVICE_PORTS["csv-importer"],
        ge=1,
        le=65535,
        description="HTTP port (API, health, ready, metrics).",
    )
    spool_dir: Path = Field(
        default=Path("/var/tmp/tributary-csv-spool"),
        description="Directory where uploads are stored until their job ends (must survive a "
        "restart for jobs to resume).",
    )
    max_upload_bytes: int = Field(
        default=8 * 1024**3, ge=1024, description="Largest CSV upload accepted; larger → 413."
    )
    upload_idle_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="An upload whose body sends nothing for this long is abandoned (408).",
    )
    chunk_rows: int = Field(
        default=50_000,
        ge=10,
        description="Rows pandas reads per chunk; a chunk is the unit of the resume checkpoint.",
    )
    slice_rows: int = Field(
        default=5_000,
        ge=1,
        description="Rows turned into points at a time inside a chunk (bounds memory).",
    )
    max_concurrent_jobs: int = Field(
        default=2, ge=1, description="Jobs processed at the same time; others wait queued."
    )
    max_errors_kept: int = Field(
        default=100, ge=0, description="Per-row errors stored in a job (all are counted)."
    )
    publish_timeout_seconds: float = Field(
        default=30.0, gt=0, description="How long to wait for a chunk's JetStream PubAcks."
    )
    publish_retries: int = Field(
        default=8,
        ge=0,
        description="Retries of a chunk whose publishes were not all acked before the job fails.",
    )
    jobs_listed: int = Field(
        default=50, ge=1, le=1000, description="Default number of jobs GET /ingest/csv/jobs lists."
    )
    job_retention_hours: float = Field(
        default=168.0,
        gt=0,
        description="Finished jobs older than this are removed from the bucket at start.",
    )
    retry_after_seconds: int = Field(
        default=2, ge=1, description="Retry-After value (seconds) sent with 503 replies."
    )
    rejected_excerpt_bytes: int = Field(
        default=512, ge=16, description="Longest row excerpt of a rejected cell on dp.rejected.csv."
    )
