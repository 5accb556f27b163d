"""Settings of writer-sqlserver (env vars, prefix-free; validated before anything connects)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator
from sqlalchemy.engine import make_url

from tributary_contracts.ports import SERVICE_PORTS
from tributary_runtime.writer import WriterSettings

DSN_SCHEMES = ("mssql", "mssql+pyodbc", "postgresql", "postgresql+psycopg2")


class WriterSqlServerSettings(WriterSettings):
    """Everything writer-sqlserver reads from the environment."""

    port: int = Field(
        default=SERVICE_PORTS["writer-sqlserver"],
        ge=1,
        le=65535,
        description="HTTP port of /health, /ready and /metrics.",
    )
    mssql_dsn: SecretStr = Field(
        description=(
            "Required. mssql://user:password@host:1433/database (SQL Server through pyodbc); "
            "postgresql://… only as the test stand-in."
        ),
    )
    mssql_odbc_driver: str = Field(
        default="FreeTDS",
        description=(
            "ODBC driver name: FreeTDS (Debian tdsodbc) or e.g. 'ODBC Driver 18 for SQL Server'; "
            "a driver= in MSSQL_DSN wins."
        ),
    )
    mssql_tds_version: str = Field(
        default="7.4", description="TDS protocol version passed to FreeTDS (ignored by others)."
    )
    mssql_write_mode: Literal["tables", "procedure"] = Field(
        default="tables",
        description=(
            "tables: batched statements on the legacy tables; procedure: EXEC "
            "dbo.sp_insert_reading_and_check_threshold once per reading."
        ),
    )
    mssql_fast_executemany: bool = Field(
        default=True, description="pyodbc fast_executemany (ODBC parameter arrays) for batches."
    )
    mssql_create_schema: bool = Field(
        default=False,
        description=(
            "Create missing legacy tables at start (development/tests); off: a missing table "
            "stops the start with a clear message."
        ),
    )
    pool_size: int = Field(
        default=2, ge=1, le=50, description="Most database connections kept in the pool."
    )
    write_timeout_seconds: int = Field(
        default=20, ge=1, le=300,
        description="Timeout of one statement, seconds (stays below the consumer's ack wait).",
    )
    startup_timeout_seconds: float = Field(
        default=60.0, ge=0,
        description="How long start waits for an unreachable database before giving up.",
    )
    @field_validator("mssql_dsn")
    @classmethod
    def _dsn_parses(cls, value: SecretStr) -> SecretStr:
        try:
            url = make_url(value.get_secret_value())
        except Exception:
            raise ValueError(
                "must be a URL like mssql://user:password@host:1433/database"
            ) from None
        if url.drivername not in DSN_SCHEMES:
            raise ValueError(
                f"scheme {url.drivername!r} not supported; use one of {', '.join(DSN_SCHEMES)}"
            )
        return value

    @property
    def dsn(self) -> str:
        return self.mssql_dsn.get_secret_value()
