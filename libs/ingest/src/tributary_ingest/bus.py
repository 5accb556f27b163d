"""A gateway's connection to the bus: NATS, JetStream objects, API keys and a ``Coalescer``,
opened within a deadline so a missing bus ends startup with one clear line."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Protocol, TypeVar

import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from pydantic import BaseModel, Field

from tributary_access.apikeys import ApiKeyStore
from tributary_contracts import (
    API_KEYS_BUCKET,
    DEFAULT_PARTITIONS,
    DP_RAW,
    Namespace,
    Transport,
    ensure_jetstream,
)
from tributary_ingest.coalesce import FLUSH_POINTS, Coalescer
from tributary_runtime.bus import connect_nats
from tributary_runtime.settings import ServiceSettings

MAX_STREAM_MESSAGE_BYTES = 8 * 1024 * 1024  # the streams' max_msg_size (libs/contracts)
READY_TIMEOUT_SECONDS = 2.0
DEFAULT_LINGER_MS = 10.0
"""A partition publishes at most one bundle per linger (``Coalescer``): with 4 partitions ≤ 400
bundles/s of small batches, whatever the request rate, so the classifier's, the writer's and
NATS's cost per message stays a small share of a point's; a point on a quiet partition waits for
no linger, one on a busy partition ≤ 10 ms, and a batch of ``FLUSH_POINTS`` or more never waits
for it."""

LINGER_DESCRIPTION = (
    "Least time between two bundles of one partition: a point on a quiet partition goes at "
    f"once, on a busy one within this (a bundle of {FLUSH_POINTS} points or more, "
    "MAX_BUNDLE_POINTS or the size limit goes without waiting)."
)

Connect = Callable[[], Awaitable[Client]]
T = TypeVar("T")

log = structlog.get_logger("tributary_ingest")


class BusSettings(Protocol):
    """What ``open_bus`` reads (on top of ``ServiceSettings``)."""

    nats_url: str
    startup_timeout_seconds: float
    bus_partitions: int

    @property
    def namespace(self) -> Namespace: ...


class GatewaySettings(BusSettings, Protocol):
    """The settings every gateway with API keys and a ``Coalescer`` has."""

    api_key_cache_seconds: float
    publish_timeout_seconds: float
    rejected_excerpt_bytes: int


class BusStartupSettings(BaseModel):
    """``open_bus``'s deadline and the fleet's partition count; mixed into a gateway's
    settings."""

    startup_timeout_seconds: float = Field(
        default=30.0,
        gt=0,
        description="How long startup waits for NATS and JetStream before exiting with an error.",
    )
    bus_partitions: int = Field(
        default=DEFAULT_PARTITIONS,
        ge=1,
        le=1024,
        description="Bus partitions (dp.raw.<domain>.part.<n>); the same count in every gateway "
        "and classifier of a fleet.",
    )


class BundleLingerSettings(BaseModel):
    """How long a gateway gathers points into a bundle; mixed into the gateways that linger."""

    bundle_linger_ms: float = Field(
        default=DEFAULT_LINGER_MS,
        ge=0,
        le=1000,
        description=LINGER_DESCRIPTION,
    )


class GatewayBusSettings(BusStartupSettings):
    """Plus the key store's cache, for the gateways that open it (``open_gateway_bus``)."""

    api_key_cache_seconds: float = Field(
        default=5.0, ge=0, description="How long a looked-up API key (or its absence) is cached."
    )


@dataclass
class GatewayBus:
    """What a gateway's lifespan opens; its handlers use it."""

    nc: Client
    js: JetStreamContext
    keys: ApiKeyStore
    publisher: Coalescer
    raw_stream: str
    owns_connection: bool

    async def close(self) -> None:
        await self.publisher.close()
        if self.owns_connection and not self.nc.is_closed:
            await self.nc.drain()

    async def ready(self) -> dict[str, bool]:
        """``/ready`` checks: connected, and the raw stream answers."""
        return await bus_ready(self.nc, self.js, self.raw_stream)


async def bus_ready(nc: Client, js: JetStreamContext, raw_stream: str) -> dict[str, bool]:
    """``/ready`` checks of a gateway's bus: ``nc`` connected, and ``raw_stream`` answers."""
    if not nc.is_connected:
        return {"nats": False, "stream": False}
    try:
        await asyncio.wait_for(js.stream_info(raw_stream), READY_TIMEOUT_SECONDS)
        return {"nats": True, "stream": True}
    except Exception:
        return {"nats": True, "stream": False}


async def open_bus(
    settings: BusSettings,
    service: str,
    *,
    nats_client: Client | None = None,
    connect: Connect | None = None,
) -> Client:
    """Connect (or use ``nats_client`` or ``connect``, see ``open_gateway_bus``) and ensure the
    JetStream objects, within ``startup_timeout_seconds``; closing is the caller's."""
    return await _within_startup_timeout(
        settings, service, _connect(settings, service, nats_client, connect)
    )


async def open_gateway_bus(
    settings: GatewaySettings,
    service: str,
    transport: Transport,
    *,
    linger_seconds: float,
    nats_client: Client | None = None,
    connect: Connect | None = None,
    observe_ack_latency: Callable[[float], None] | None = None,
    observe_bundle_points: Callable[[float], None] | None = None,
) -> GatewayBus:
    """Connect (or use ``nats_client``, never closed, or ``connect``), ensure the JetStream
    objects, open the key store and the coalescer — all within ``startup_timeout_seconds``."""
    s = settings
    ns = s.namespace

    async def start() -> GatewayBus:
        nc = await _connect(settings, service, nats_client, connect)
        js = nc.jetstream()
        keys = ApiKeyStore(
            await js.key_value(ns.bucket(API_KEYS_BUCKET)),
            cache_seconds=s.api_key_cache_seconds,
        )
        publisher = coalescer(
            js,
            nc,
            settings,
            transport,
            linger_seconds,
            publish_timeout=s.publish_timeout_seconds,
            excerpt_bytes=s.rejected_excerpt_bytes,
            observe_ack_latency=observe_ack_latency,
            observe_bundle_points=observe_bundle_points,
        )
        return GatewayBus(
            nc, js, keys, publisher, ns.stream(DP_RAW), owns_connection=nats_client is None
        )

    return await _within_startup_timeout(s, service, start())


def coalescer(
    js: JetStreamContext,
    nc: Client,
    settings: BusSettings,
    transport: Transport,
    linger_seconds: float,
    *,
    publish_timeout: float,
    excerpt_bytes: int,
    observe_ack_latency: Callable[[float], None] | None = None,
    observe_bundle_points: Callable[[float], None] | None = None,
) -> Coalescer:
    """The gateway's ``Coalescer`` on ``nc`` (bounded by the server's ``max_payload``)."""
    return Coalescer(
        js,
        settings.namespace,
        transport=transport,
        partitions=settings.bus_partitions,
        linger_seconds=linger_seconds,
        timeout=publish_timeout,
        max_message_bytes=min(nc.max_payload, MAX_STREAM_MESSAGE_BYTES),
        excerpt_bytes=excerpt_bytes,
        observe_ack_latency=observe_ack_latency,
        observe_bundle_points=observe_bundle_points,
    )


async def _connect(
    settings: BusSettings, service: str, nats_client: Client | None, connect: Connect | None
) -> Client:
    if nats_client is not None:
        nc = nats_client
    elif connect is not None:
        nc = await connect()
    else:
        assert isinstance(settings, ServiceSettings)
        nc = await connect_nats(settings, service)
    await ensure_jetstream(nc.jetstream(), settings.namespace)
    return nc


async def _within_startup_timeout(settings: BusSettings, service: str, start: Awaitable[T]) -> T:
    # connect_nats retries forever; bounded here so a missing bus ends the process with one
    # clear line (and SIGTERM, which uvicorn holds until startup ends, takes effect).
    try:
        return await asyncio.wait_for(start, settings.startup_timeout_seconds)
    except TimeoutError:
        log.error(
            "startup_failed",
            service=service,
            reason=f"NATS/JetStream at {settings.nats_url} not ready within "
            f"{settings.startup_timeout_seconds}s",
        )
        raise
