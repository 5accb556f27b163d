"""Settings of the HTTP gateway (env vars, prefix-free; see the README's table)."""

from __future__ import annotations

from pydantic import Field, SecretStr

from tributary_ingest.bus import BundleLingerSettings, GatewayBusSettings
from tributary_runtime.guard import GuardSettings
from tributary_runtime.settings import ServiceSettings


class GatewayHttpSettings(GatewayBusSettings, BundleLingerSettings, GuardSettings, ServiceSettings):
    """What the HTTP gateway reads from the environment."""

    port: int = Field(
        default=8001, ge=1, le=65535, description="HTTP port (API, health, ready, metrics)."
    )
    max_body_bytes: int = Field(
        default=5 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger → 413."
    )
    max_points_per_request: int = Field(
        default=10_000, ge=1, description="Most data_points in one request; more → 413."
    )
    publish_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How long to wait for every JetStream PubAck before replying 503.",
    )
    retry_after_seconds: int = Field(
        default=2, ge=1, description="Retry-After value (seconds) sent with 503 replies."
    )
    rejected_excerpt_bytes: int = Field(
        default=512,
        ge=16,
        description="Longest payload excerpt of a rejected point sent to dp.rejected.http.",
    )
    device_cache_seconds: float = Field(
        default=30.0,
        ge=0,
        description="How long a device/sensor looked up in the IoT registry (or its absence) is "
        "cached; a disabled device is refused at most this much later.",
    )
    postgres_dsn: str = Field(
        default="postgresql://postgres@127.0.0.1:5432/tributary",
        description="PostgreSQL filled by writer-postgres; read only by GET /sensors/{id}/status "
        "(connected on first use; ingest never depends on it).",
    )
    key_rotation_overlap_seconds: float = Field(
        default=24 * 3600.0,
        ge=0,
        description="How long a rotated key stays valid next to its successor by default.",
    )
    provisioning_secret: SecretStr | None = Field(
        default=None,
        description="Shared HMAC-SHA256 secret of POST /devices/provision (or "
        "PROVISIONING_SECRET_FILE); unset: the endpoint answers 503 'provisioning is not "
        "configured'.",
    )
    provisioning_window_seconds: int = Field(
        default=300,
        ge=1,
        le=1800,
        description="Largest difference between a provisioning request's timestamp and the "
        "gateway's clock (either way); nonces are remembered 1 h, at least twice this.",
    )
