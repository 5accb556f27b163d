"""Settings of ml-batch (env vars, prefix-free; validated before anything connects)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from tributary_contracts import SinkRoutes
from tributary_contracts.ports import SERVICE_PORTS
from tributary_runtime.settings import ServiceSettings

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/tributary"
MODELS = ("ewma", "trend", "taylor")
Model = Literal["ewma", "trend", "taylor"]


def parse_model_map(text: str) -> dict[str, str]:
    """``type=model,…`` → {stream type: model}; ValueError naming the bad entry."""
    mapping: dict[str, str] = {}
    for entry in filter(None, (e.strip() for e in text.split(","))):
        stream_type, sep, model = (part.strip() for part in entry.partition("="))
        if not sep or not stream_type:
            raise ValueError(f"entry {entry!r} must look like 'stream_type=model'")
        if model not in MODELS:
            raise ValueError(f"entry {entry!r}: model must be one of {', '.join(MODELS)}")
        mapping[stream_type] = model
    return mapping


class MlBatchSettings(ServiceSettings):
    """Everything ml-batch reads from the environment."""

    port: int = Field(
        default=SERVICE_PORTS["ml-batch"],
        ge=1,
        le=65535,
        description="HTTP port of /health, /ready and /metrics.",
    )
    postgres_dsn: SecretStr = Field(
        default=SecretStr(DEFAULT_DSN),
        description="PostgreSQL DSN: data_points is read, predictions written (schema by "
        "writer-postgres migrations).",
    )
    mssql_dsn: SecretStr | None = Field(
        default=None,
        description="SQL Server, in the forms writer-sqlserver accepts (mssql://user:pass@host:"
        "1433/db, mssql+pyodbc://…, an ODBC connection string; postgresql://… the stand-in); "
        "when set, domains SINK_ROUTES gives to sqlserver are read from dbo.sensor_readings.",
    )
    mssql_odbc_driver: str = Field(
        default="FreeTDS",
        description="ODBC driver for an mssql:// MSSQL_DSN (a driver= in the DSN wins), as "
        "writer-sqlserver's.",
    )
    mssql_tds_version: str = Field(
        default="7.4", description="TDS protocol version passed to FreeTDS (ignored by others)."
    )
    sink_routes: str = Field(
        default="*=postgres", description="Which database owns which domain (as the writers)."
    )
    ai_explainer_url: str | None = Field(
        default=None,
        description="Base URL of the AI explainer (POST <url>/explain/anomaly); unset → "
        "built-in explanations.",
    )
    ml_interval_seconds: float = Field(
        default=60.0, gt=0, description="Pause between two runs of the service loop."
    )
    ml_window_points: int = Field(
        default=100, ge=3, le=10_000, description="Latest points per stream the models see."
    )
    ml_min_points: int = Field(
        default=8, ge=3, description="Streams with fewer points in the window are skipped."
    )
    ml_recent_seconds: float = Field(
        default=86_400.0, gt=0,
        description="A stream is looked at when it has a point this recent (and newer than "
        "its watermark).",
    )
    ml_max_streams: int = Field(
        default=100_000, ge=1, description="Most streams per run (the rest wait for the next)."
    )
    ml_horizon_points: int = Field(
        default=10, ge=1, le=1000,
        description="Forecast steps; a step is the stream's median sampling interval.",
    )
    ml_model: Model = Field(
        default="trend", description="Model of streams whose type ML_MODEL_BY_TYPE does not name."
    )
    ml_model_by_type: str = Field(
        default="temperature=taylor,humidity=taylor,pressure=taylor,voltage=taylor,"
        "cpu_usage=ewma,memory_usage=ewma,price=ewma",
        description="Model per stream type: type=ewma|trend|taylor, comma separated.",
    )
    ml_ewma_alpha: float = Field(
        default=0.3, gt=0, le=1, description="Smoothing factor of the EWMA model."
    )
    ml_taylor_points: int = Field(
        default=12, ge=3, description="Latest points the Taylor model's derivatives come from."
    )
    ml_score_points: int = Field(
        default=3, ge=1, description="Latest points scored for anomaly (the rest is baseline)."
    )
    ml_anomaly_threshold: float = Field(
        default=4.0, gt=0, description="Robust z-score at or above which is_anomaly is true."
    )
    ml_explain_min_score: float = Field(
        default=5.0, ge=0, description="Anomalies scoring at least this get an AI explanation."
    )
    ml_explain_timeout_seconds: float = Field(
        default=5.0, gt=0, description="Timeout of one explainer request."
    )
    ml_explain_budget_seconds: float = Field(
        default=20.0, gt=0,
        description="Longest the explainer pass of one run may take; the rest waits a run.",
    )
    ml_explain_batch: int = Field(
        default=50, ge=1, description="Most anomalies sent to the explainer per run."
    )
    ml_explain_concurrency: int = Field(
        default=4, ge=1, le=64, description="Explainer requests in flight at once."
    )
    ml_explain_max_attempts: int = Field(
        default=5, ge=1,
        description="Failed explainer attempts before the built-in explanation is written.",
    )

    @field_validator("sink_routes")
    @classmethod
    def _routes_parse(cls, value: str) -> str:
        SinkRoutes.parse(value)
        return value

    @field_validator("ml_model_by_type")
    @classmethod
    def _models_parse(cls, value: str) -> str:
        parse_model_map(value)
        return value

    @field_validator("ai_explainer_url")
    @classmethod
    def _url(cls, value: str | None) -> str | None:
        if value is None or value.strip() == "":
            return None
        if not value.startswith(("http://", "https://")):
            raise ValueError("must start with http:// or https://")
        return value.rstrip("/")

    @property
    def dsn(self) -> str:
        return self.postgres_dsn.get_secret_value()

    @property
    def routes(self) -> SinkRoutes:
        return SinkRoutes.parse(self.sink_routes)

    @property
    def model_by_type(self) -> dict[str, str]:
        return parse_model_map(self.ml_model_by_type)
