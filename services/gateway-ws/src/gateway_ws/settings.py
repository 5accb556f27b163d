"""Settings of the WebSocket gateway (env vars, prefix-free; see the README's table)."""

from __future__ import annotations

from pydantic import Field

from tributary_access.guard import GuardSettings
from tributary_contracts.ports import SERVICE_PORTS
from tributary_ingest.bus import BundleLingerSettings, GatewayBusSettings
from tributary_runtime.settings import ServiceSettings


class GatewayWsSettings(GatewayBusSettings, BundleLingerSettings, GuardSettings, ServiceSettings):
    """What the WebSocket gateway reads from the environment."""

    port: int = Field(
        default=SERVICE_PORTS["gateway-ws"],
        ge=1,
        le=65535,
        description="HTTP port (/ingest/stream, health, ready, metrics).",
    )
    max_unacked_batches: int = Field(
        default=100,
        ge=1,
        le=10_000,
        description="Replies (acks) a session may owe before the server stops reading its socket.",
    )
    max_frame_bytes: int = Field(
        default=1024 * 1024,
        ge=1024,
        description="Largest message handled; larger → error reply (4× this closes with 1009).",
    )
    max_points_per_message: int = Field(
        default=5_000, ge=1, description="Most points in one data message's batch; more → error."
    )
    max_sessions_per_key: int = Field(
        default=200, ge=1, description="Open sessions one API key may hold in this process."
    )
    connect_timeout_seconds: float = Field(
        default=10.0, gt=0, description="How long a new socket may take to send its connect."
    )
    idle_timeout_seconds: float = Field(
        default=60.0,
        gt=0,
        description="A session with nothing received and nothing owed for this long is closed.",
    )
    ping_interval_seconds: float = Field(
        default=20.0, ge=0, description="WebSocket ping frame interval (0 disables keepalive)."
    )
    ping_timeout_seconds: float = Field(
        default=20.0, gt=0, description="A ping unanswered for this long closes with 1011."
    )
    publish_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How long to wait for a message's PubAcks before closing the session (1013).",
    )
    shutdown_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="On SIGTERM, how long sessions get to ack what is durable before closing.",
    )
    rejected_excerpt_bytes: int = Field(
        default=512,
        ge=16,
        description="Longest payload excerpt of a rejected point sent to dp.rejected.ws.",
    )
    retry_after_seconds: int = Field(
        default=2,
        ge=1,
        description="retry_after (seconds) of a bus_unavailable error: when to reconnect.",
    )
