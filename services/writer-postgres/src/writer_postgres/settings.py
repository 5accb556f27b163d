"""Settings of writer-postgres (env vars, prefix-free; validated before anything connects)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from tributary_contracts.ports import SERVICE_PORTS
from tributary_runtime.postgres import DEFAULT_DSN, PostgresSettings
from tributary_runtime.writer import WriterSettings


class WriterPostgresSettings(PostgresSettings, WriterSettings):
    """Everything writer-postgres reads from the environment."""

    port: int = Field(
        default=SERVICE_PORTS["writer-postgres"],
        ge=1,
        le=65535,
        description="HTTP port of /health, /ready and /metrics.",
    )
    postgres_dsn: SecretStr = Field(
        default=SecretStr(DEFAULT_DSN),
        description=f"PostgreSQL DSN (default {DEFAULT_DSN}); the database is created if missing.",
    )
    consumers: int = Field(
        default=2, ge=1, le=32,
        description="Concurrent fetch-and-write loops (one parses while another commits).",
    )
    pool_size: int = Field(
        default=4, ge=1, le=100, description="Most PostgreSQL connections in the pool."
    )
    write_timeout_seconds: float = Field(
        default=20.0, gt=0, le=300,
        description="Timeout of one database statement (stays below the consumer's ack wait).",
    )
    partition_months_back: int = Field(
        default=3, ge=0, le=120,
        description="Monthly partitions created behind the current month (native partitioning).",
    )
    partition_months_ahead: int = Field(
        default=3, ge=1, le=120,
        description="Monthly partitions kept ready ahead of the current month.",
    )
    partition_check_seconds: float = Field(
        default=3600.0, gt=0,
        description="How often the maintenance task makes sure partitions exist ahead.",
    )
    rejects_retention_days: float = Field(
        default=90.0, gt=0,
        description="ingest_rejects rows older than this (by the time the input was refused) "
        "are deleted by the maintenance task (DP_REJECTED itself keeps 7 days).",
    )
    raw_ledger_retention_days: float = Field(
        default=30.0, gt=0,
        description="raw_record rows (and their ingest_error rows) older than this are deleted "
        "by the maintenance task.",
    )
    reject_excerpt_bytes: int = Field(
        default=1024, ge=0, le=65536,
        description="Most bytes of a refused item's excerpt stored in ingest_rejects "
        "(cut on a character boundary; excerpt_truncated marks the cut ones).",
    )
    startup_timeout_seconds: float = Field(
        default=60.0, ge=0,
        description="How long start waits for an unreachable PostgreSQL before giving up.",
    )
