"""``HttpContext``: what gateway-http's handlers use, opened by the lifespan (``open_context``)
and handed to every handler module (``ingest``, ``config_api``, ``keys_api``, ``legacy``,
``legacy_ops``, ``provision``).

It is the gateway base's ``GatewayContext`` (bus, access checks, publish, 503s) plus what only
this gateway has: the stream-configs bucket, the raw ledger, the live switches, the IoT device
registry and provisioning nonces, and the stores the legacy reads go to.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field

import asyncpg
from nats.aio.client import Client
from nats.js.kv import KeyValue
from starlette.requests import Request

from gateway_http.metrics import ACK_LATENCY, BUNDLE_POINTS, ERRORS
from gateway_http.sensor_status import StoredIot
from gateway_http.settings import GatewayHttpSettings
from tributary_contracts import (
    DEVICES_BUCKET,
    LIVE_SETTINGS,
    PROVISION_NONCES_BUCKET,
    STREAM_CONFIGS_BUCKET,
    SWITCHES_BUCKET,
    Transport,
)
from tributary_ingest import http
from tributary_ingest.bus import Connect
from tributary_ingest.gateway import GatewayContext, GatewayMetrics, open_gateway
from tributary_ingest.ledger import RawLedger
from tributary_runtime.devices import DeviceRegistry
from tributary_runtime.stream_configs import StreamConfigBucket
from tributary_runtime.switches import LiveSwitches, parse_bool, parse_list

SERVICE_NAME = "gateway-http"
METRICS = GatewayMetrics(ERRORS, ACK_LATENCY, BUNDLE_POINTS)


class Postgres:
    """The PostgreSQL pool (``POSTGRES_DSN``, ``POSTGRES_SSL_CA_FILE``), made on first use:
    ingest never depends on it."""

    def __init__(self, settings: GatewayHttpSettings) -> None:
        self.dsn = settings.dsn
        self._pool: asyncpg.Pool | None = None
        self._lock = asyncio.Lock()

    async def pool(self) -> asyncpg.Pool:
        async with self._lock:
            if self._pool is None:
                self._pool = await asyncpg.create_pool(self.dsn, min_size=0, max_size=2, timeout=5)
            return self._pool

    async def close(self) -> None:
        if self._pool is not None:
            await self._pool.close()
            self._pool = None


@dataclass
class HttpContext:
    """See the module docstring; ``gateway`` does the steps every gateway shares."""

    gateway: GatewayContext[GatewayHttpSettings]
    configs: StreamConfigBucket
    ledger: RawLedger
    switches: LiveSwitches
    registry: DeviceRegistry
    devices: KeyValue
    nonces: KeyValue
    postgres: Postgres
    stored: StoredIot
    stall: http.StallWatch
    started: float = field(default_factory=time.monotonic)
    keyless: dict[str, tuple[float | None, int]] = field(default_factory=dict)
    """Migration mode: device → (monotonic time of its last audit event, packets since)."""
    _domains: tuple[str | None, frozenset[str]] = (None, frozenset())

    @property
    def settings(self) -> GatewayHttpSettings:
        return self.gateway.settings

    def universal_api_enabled(self) -> bool:
        """``UNIVERSAL_API_ENABLED``: the live switch, else the environment's."""
        value = self.switches.value("UNIVERSAL_API_ENABLED")
        if value is None:
            return self.settings.universal_api_enabled
        try:
            return parse_bool(value)
        except ValueError:
            ERRORS.labels("switches", "invalid_value").inc()
            return self.settings.universal_api_enabled

    def disabled_domains(self) -> frozenset[str]:
        """``DISABLED_DOMAINS``: the live switch, else the environment's (parsed once)."""
        value = self.switches.value("DISABLED_DOMAINS")
        if value is None:
            return self.settings.disabled_domain_set
        if self._domains[0] != value:
            self._domains = (value, parse_list(value))
        return self._domains[1]

    async def read_body(self, request: Request) -> bytes:
        """The request's body within ``MAX_BODY_BYTES`` (413) and ``BODY_IDLE_TIMEOUT_SECONDS``
        (408)."""
        return await http.read_body(
            request.scope, request.receive, self.settings.max_body_bytes, self.stall
        )

    async def close(self) -> None:
        await self.switches.stop()
        self.stored.close()
        await self.postgres.close()
        await self.gateway.close()


async def open_context(
    settings: GatewayHttpSettings,
    *,
    nats_client: Client | None = None,
    connect: Connect | None = None,
) -> HttpContext:
    """Open the gateway (``open_gateway``: the bus, key store, coalescer, audit, access) and
    this gateway's buckets; the live switches are followed before it returns."""
    ns = settings.namespace
    gateway = await open_gateway(
        settings,
        SERVICE_NAME,
        Transport.HTTP,
        METRICS,
        linger_seconds=settings.bundle_linger_ms / 1000,
        nats_client=nats_client,
        connect=connect,
    )
    js = gateway.js
    ledger = RawLedger(
        js, ns, Transport.HTTP, settings.ledger_selector,
        timeout=settings.publish_timeout_seconds,
        max_payload_bytes=settings.raw_ledger_payload_bytes,
        on_failure=lambda exc: ERRORS.labels("ledger", type(exc).__name__).inc(),
    )
    switches = LiveSwitches(
        await js.key_value(ns.bucket(SWITCHES_BUCKET)), SERVICE_NAME, LIVE_SETTINGS[SERVICE_NAME]
    )
    await switches.start(settings.startup_timeout_seconds)
    devices = await js.key_value(ns.bucket(DEVICES_BUCKET))
    postgres = Postgres(settings)
    return HttpContext(
        gateway,
        StreamConfigBucket(await js.key_value(ns.bucket(STREAM_CONFIGS_BUCKET))),
        ledger,
        switches,
        DeviceRegistry(devices, cache_seconds=settings.device_cache_seconds),
        devices,
        await js.key_value(ns.bucket(PROVISION_NONCES_BUCKET)),
        postgres,
        StoredIot(settings, postgres.pool),
        http.StallWatch(settings.body_idle_timeout_seconds),
    )

