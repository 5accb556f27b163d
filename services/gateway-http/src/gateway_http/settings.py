"""Settings of the HTTP gateway (env vars, prefix-free; see the README's table)."""

from __future__ import annotations

from typing import Literal

from pydantic import Field, SecretStr, field_validator

from gateway_http.deprecation import DeprecationSettings
from tributary_access.guard import GuardSettings
from tributary_contracts import SinkRoutes
from tributary_contracts.ports import SERVICE_PORTS, local_url
from tributary_ingest.bus import BundleLingerSettings, GatewayBusSettings
from tributary_ingest.ledger import RawLedgerSettings
from tributary_runtime.postgres import DEFAULT_DSN, PostgresSettings
from tributary_runtime.settings import ServiceSettings
from tributary_runtime.switches import parse_list


class GatewayHttpSettings(
    GatewayBusSettings,
    BundleLingerSettings,
    RawLedgerSettings,
    DeprecationSettings,
    GuardSettings,
    PostgresSettings,
    ServiceSettings,
):
    """What the HTTP gateway reads from the environment."""

    port: int = Field(
        default=SERVICE_PORTS["gateway-http"],
        ge=1,
        le=65535,
        description="HTTP port (API, health, ready, metrics).",
    )
    universal_api_enabled: bool = Field(
        default=True,
        description="Serve POST /ingest/data (seed 001's ENABLE_AGNOSTIC_API); false: 404, the "
        "legacy endpoints only. Live: `tributary switches set gateway-http "
        "UNIVERSAL_API_ENABLED false` overrides it without a restart.",
    )
    disabled_domains: str = Field(
        default="",
        description="Comma list of domains whose points POST /ingest/data refuses (403): seed "
        "001's per-domain enablement. Live: `tributary switches set gateway-http "
        "DISABLED_DOMAINS …` overrides it without a restart.",
    )
    max_body_bytes: int = Field(
        default=5 * 1024 * 1024, ge=1024, description="Largest request body accepted; larger → 413."
    )
    body_idle_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="A request whose body sends nothing for this long is abandoned (408).",
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
    postgres_dsn: SecretStr = Field(
        default=SecretStr(DEFAULT_DSN),
        description="PostgreSQL filled by writer-postgres (a secret, or POSTGRES_DSN_FILE); read "
        "by GET /sensors/{id}/status, /devices/{uuid}/readings and probed by /health/postgres "
        "(connected on first use; ingest never depends on it).",
    )
    device_auth_mode: Literal["required", "migration"] = Field(
        default="required",
        description="POST /ingest/packets: 'required' = every packet shows its device's "
        "X-Device-Key; 'migration' = a packet without the header is accepted from a registered, "
        "enabled device (counted and audited; the legacy DEVICE_AUTH_ENABLED=0). A wrong key is "
        "401 in both modes.",
    )
    device_auth_audit_seconds: float = Field(
        default=3600.0,
        gt=0,
        description="Migration mode: at most one device_unauthenticated audit event per device "
        "per this many seconds (carrying the count of keyless packets since the last one).",
    )
    sink_routes: str = Field(
        default="*=postgres",
        description="The fleet's SINK_ROUTES (same value as the writers'): which database owns "
        "domain iot, where /sensors/{id}/status and /devices/{uuid}/readings read.",
    )
    mssql_dsn: SecretStr | None = Field(
        default=None,
        description="SQL Server of the legacy IoT tables (or MSSQL_DSN_FILE; same forms as "
        "writer-sqlserver). Set together with SINK_ROUTES=iot=sqlserver, "
        "GET /sensors/{id}/status reads the latest reading and open alert there.",
    )
    mssql_odbc_driver: str = Field(
        default="FreeTDS",
        description="ODBC driver for an mssql:// MSSQL_DSN without odbc_connect (as "
        "writer-sqlserver).",
    )
    mssql_tds_version: str = Field(
        default="7.4", description="TDS_Version when the ODBC driver is FreeTDS."
    )
    mqtt_gateway_urls: list[str] = Field(
        default_factory=lambda: [local_url("gateway-mqtt")],
        description="Ops URLs of the gateway-mqtt replicas (JSON list); /mqtt/health and "
        "/mqtt/stats read their /ready and /metrics.",
    )
    writer_urls: dict[str, str] = Field(
        default_factory=lambda: {"writer-postgres": local_url("writer-postgres")},
        description="Ops URLs of the writers by name (JSON object); /resilience/health reads "
        "their circuit breakers from /metrics (add writer-sqlserver when it runs).",
    )
    ops_probe_timeout_seconds: float = Field(
        default=2.0,
        gt=0,
        description="Timeout of each probe the legacy ops endpoints make (PostgreSQL, the "
        "other services' ops ports, JetStream).",
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

    @field_validator("sink_routes")
    @classmethod
    def _routes_parse(cls, value: str) -> str:
        SinkRoutes.parse(value)  # raises ValueError naming the bad entry
        return value

    @property
    def routes(self) -> SinkRoutes:
        return SinkRoutes.parse(self.sink_routes)

    @property
    def disabled_domain_set(self) -> frozenset[str]:
        return parse_list(self.disabled_domains)
