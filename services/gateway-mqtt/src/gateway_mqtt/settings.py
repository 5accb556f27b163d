"""Settings of the MQTT gateway (env vars, prefix-free; see the README's table)."""

from __future__ import annotations

from typing import Literal
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator

from tributary_contracts.ports import SERVICE_PORTS
from tributary_ingest.bus import (
    DEFAULT_LINGER_MS,
    LINGER_DESCRIPTION,
    BundleLingerSettings,
    BusStartupSettings,
)
from tributary_ingest.ledger import RawLedgerSettings
from tributary_runtime.settings import ServiceSettings

MQTT_SCHEMES = {"mqtt": 1883, "mqtts": 8883}


class GatewayMqttSettings(
    BusStartupSettings, BundleLingerSettings, RawLedgerSettings, ServiceSettings
):
    """What the MQTT gateway reads from the environment."""

    port: int = Field(
        default=SERVICE_PORTS["gateway-mqtt"],
        ge=1,
        le=65535,
        description="HTTP port (health, ready, metrics).",
    )
    bundle_linger_ms: float = Field(
        default=20.0,
        ge=0,
        le=1000,
        description=f"{LINGER_DESCRIPTION} Longer than the HTTP and WebSocket gateways' "
        f"{DEFAULT_LINGER_MS:g} ms: the broker, not the bundle, answers the producer (PUBACK), "
        "so lingering only delays the row, and bigger bundles cost less CPU per point.",
    )
    mqtt_url: str = Field(
        default="mqtt://127.0.0.1:1883",
        description="Broker URL: mqtt://host[:1883] or mqtts://host[:8883] (TLS).",
    )
    mqtt_client_id: str | None = Field(
        default=None,
        min_length=1,
        max_length=128,
        description=(
            "Stable client id of the persistent session (default: MQTT_USERNAME if set, else "
            "tributary-gateway-mqtt plus -<BUS_PREFIX> if set); every replica needs its own (two "
            "clients with one id disconnect each other). The repository's broker config makes "
            "a client's id its user name, so there each replica needs its own user."
        ),
    )
    mqtt_username: str | None = Field(
        default=None,
        description="Broker user name (`tributary mqtt add NAME --role gateway`).",
    )
    mqtt_password: SecretStr | None = Field(
        default=None, description="Broker password (or MQTT_PASSWORD_FILE)."
    )
    mqtt_tls_ca: str | None = Field(
        default=None,
        description="CA bundle file for mqtts:// (default: the system's trusted CAs).",
    )
    mqtt_protocol: Literal["5", "3.1.1"] = Field(
        default="5",
        description=(
            "MQTT protocol version. 5 lets the gateway set its in-flight window (receive "
            "maximum); with 3.1.1 the broker's max_inflight_messages (Mosquitto: 20) applies."
        ),
    )
    mqtt_qos: Literal[0, 1] = Field(
        default=1,
        description="Subscription QoS: 1 = at least once (PUBACK after PubAck); 0 may lose data.",
    )
    mqtt_session_expiry_seconds: int = Field(
        default=7 * 24 * 3600,
        ge=0,
        description=(
            "MQTT 5 session expiry: how long the broker keeps the session (and queues messages) "
            "while the gateway is away."
        ),
    )
    mqtt_keepalive_seconds: int = Field(
        default=30, ge=5, le=65535, description="MQTT keepalive interval."
    )
    mqtt_topic_prefix: str | None = Field(
        default=None,
        description=(
            "Topic levels in front of every subscribed topic, e.g. 'site-a' → "
            "'site-a/<domain>/<source>/<stream>/data' (default: BUS_PREFIX, so a namespaced "
            "fleet only sees its own topics; empty in production)."
        ),
    )
    mqtt_topics: str = Field(
        default="+/+/+/data,iot/sensors/+/readings",
        description="Comma-separated topic filters to subscribe to, relative to the topic prefix.",
    )
    mqtt_shared_group: str = Field(
        default="",
        description=(
            "If set, subscribe as '$share/<group>/<filter>' so replicas split the messages."
        ),
    )
    mqtt_reconnect_min_seconds: float = Field(
        default=0.5, gt=0, description="First reconnect delay after losing the broker."
    )
    mqtt_reconnect_max_seconds: float = Field(
        default=30.0,
        gt=0,
        description="Longest reconnect delay (doubles per failure, ±50 % jitter).",
    )
    max_in_flight: int = Field(
        default=2000,
        ge=1,
        le=65535,
        description=(
            "Most QoS 1 messages received but not yet acknowledged (MQTT 5 receive maximum); "
            "when JetStream does not acknowledge, the gateway stops there."
        ),
    )
    max_payload_bytes: int = Field(
        default=64 * 1024, ge=64, description="Largest accepted MQTT payload; larger is rejected."
    )
    publish_timeout_seconds: float = Field(
        default=5.0,
        gt=0,
        description="How long to wait for a bundle's JetStream PubAck before retrying.",
    )
    shutdown_timeout_seconds: float = Field(
        default=10.0,
        gt=0,
        description="How long shutdown waits for in-flight batches to be acknowledged.",
    )
    rejected_excerpt_bytes: int = Field(
        default=512,
        ge=16,
        description="Longest payload excerpt of a rejected message sent to dp.rejected.mqtt.",
    )

    @field_validator("mqtt_url")
    @classmethod
    def _check_url(cls, value: str) -> str:
        parts = urlsplit(value)
        if parts.scheme not in MQTT_SCHEMES or not parts.hostname:
            raise ValueError("expected mqtt://host[:port] or mqtts://host[:port]")
        _ = parts.port  # raises ValueError for a bad port
        return value

    @field_validator("mqtt_topic_prefix")
    @classmethod
    def _check_prefix(cls, value: str | None) -> str | None:
        if value is None:
            return None
        value = value.strip("/")
        if any(c in value for c in "+#\x00"):
            raise ValueError("the topic prefix cannot contain '+', '#' or NUL")
        return value

    @field_validator("mqtt_shared_group")
    @classmethod
    def _check_group(cls, value: str) -> str:
        if any(c in value for c in "/+#\x00"):
            raise ValueError("the shared group cannot contain '/', '+', '#' or NUL")
        return value

    @field_validator("mqtt_topics")
    @classmethod
    def _check_topics(cls, value: str) -> str:
        if not [f for f in value.split(",") if f.strip()]:
            raise ValueError("at least one topic filter is required")
        return value

    @property
    def topic_prefix(self) -> str:
        """``MQTT_TOPIC_PREFIX``, or ``BUS_PREFIX`` when unset."""
        return self.bus_prefix if self.mqtt_topic_prefix is None else self.mqtt_topic_prefix

    @property
    def client_id(self) -> str:
        """``MQTT_CLIENT_ID``, else ``MQTT_USERNAME``, else derived from ``BUS_PREFIX``."""
        if self.mqtt_client_id is not None:
            return self.mqtt_client_id
        if self.mqtt_username:
            return self.mqtt_username
        return "tributary-gateway-mqtt" + (f"-{self.bus_prefix}" if self.bus_prefix else "")

    @property
    def broker(self) -> tuple[str, int, bool]:
        """(host, port, tls) of ``mqtt_url``."""
        parts = urlsplit(self.mqtt_url)
        assert parts.hostname is not None
        return parts.hostname, parts.port or MQTT_SCHEMES[parts.scheme], parts.scheme == "mqtts"

    def subscriptions(self) -> list[str]:
        """Topic filters to subscribe to: prefix and shared group applied."""
        filters = [f.strip().strip("/") for f in self.mqtt_topics.split(",") if f.strip()]
        if self.topic_prefix:
            filters = [f"{self.topic_prefix}/{f}" for f in filters]
        if self.mqtt_shared_group:
            filters = [f"$share/{self.mqtt_shared_group}/{f}" for f in filters]
        return filters
