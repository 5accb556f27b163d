"""The gateway base: one typed ``GatewayContext`` that every gateway (gateway-http, gateway-ws,
gateway-mqtt, csv-importer) opens in its lifespan and hands to its handlers.

A context holds what a gateway's handlers use — its settings, the bus (``GatewayBus``: NATS,
JetStream, the API-key store, the ``Coalescer``), the access checks (``Access``: key
authentication, rate limits, audit) and its metrics — and the steps every gateway repeats:

- ``admit`` / ``authenticate`` / ``check``: the client IP's budget (429), the key (401; the key
  store not answering → 503), role and scope (403), each refusal audited;
- ``admit_points`` / ``admit_sources``: the sources' live/backfill point budgets (429/413);
- ``publish`` / ``publish_sources``: the points into bundles, answered once JetStream
  acknowledged every bundle holding them (``PublishError`` → 503);
- ``unavailable`` / ``fault``: the 503 every gateway answers when the bus (or a bucket) did not
  answer: ``{"error": message, "retry_after": n}`` with ``Retry-After: n``, counted in
  ``metrics.errors{stage, error_type}`` and logged (throttled).

Refusals are raised as ``tributary_runtime.ops.Reply`` (status, ``{"error": ...}`` body,
headers): HTTP services answer them as they are (``tributary_ingest.http``), the WebSocket
gateway maps their status to its protocol's error codes. A transport that authenticates
elsewhere (MQTT: the broker) opens the context without access checks (``access=False``).

Usage::

    ctx = await open_gateway(
        settings, "gateway-x", Transport.HTTP, GatewayMetrics(ERRORS), linger_seconds=0.002
    )
    target = "POST /ingest/data"  # or a function making it: called only to audit a refusal
    ctx.guard.admit(ip)  # ctx.guard: the transport-neutral Access (tributary_access.access)
    granted = await ctx.authenticate(key, ip, target)  # + the key store's 503
    ctx.guard.check(granted, Action.WRITE_POINTS, ip, target, domain, source_id)
    ctx.guard.admit_points(domain, source_id, (p.ts for p in points), received_at)
    outcome = await ctx.publish(domain, source_id, received_at, points, rejections)
    ...
    await ctx.close()
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Generic, Protocol, TypeVar

import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from prometheus_client import Counter, Histogram

from tributary_access.access import Access, Target
from tributary_access.apikeys import Granted
from tributary_access.audit import AuditLog
from tributary_access.ratelimit import IngestLimiter, RateLimitSettings
from tributary_contracts import DataPoint, Transport
from tributary_ingest.batches import PublishOutcome
from tributary_ingest.bus import Connect, GatewayBus, GatewaySettings, open_gateway_bus
from tributary_ingest.coalesce import Coalescer, settle
from tributary_ingest.points import Rejection
from tributary_runtime.logs import ThrottledWarning
from tributary_runtime.ops import Reply
from tributary_runtime.publish import PublishError, error_type

BUS_UNAVAILABLE = (
    "the message bus did not acknowledge the data; nothing was accepted, retry later"
)
"""The 503's default message."""

log = structlog.get_logger("tributary_ingest.gateway")


class ContextSettings(GatewaySettings, Protocol):
    """What a ``GatewayContext`` reads of its gateway's settings (on top of
    ``GatewaySettings``); the access checks also need ``RateLimitSettings``' fields."""

    retry_after_seconds: int


S = TypeVar("S", bound=ContextSettings)


@dataclass(frozen=True)
class GatewayMetrics:
    """A gateway's own metrics that the context feeds.

    ``errors`` has labels ``(stage, error_type)``: every 503 and lost best-effort publish is
    counted there. ``ack_latency`` observes each ``publish``'s wait for its PubAcks,
    ``bundle_points`` the points of each bundle published (both optional)."""

    errors: Counter
    ack_latency: Histogram | None = None
    bundle_points: Histogram | None = None


def unavailable_reply(retry_after_seconds: int, message: str = BUS_UNAVAILABLE) -> Reply:
    """The contract's 503: ``{"error": message, "retry_after": n}`` with ``Retry-After: n``."""
    return Reply(
        503,
        {"error": message, "retry_after": retry_after_seconds},
        {"Retry-After": str(retry_after_seconds)},
    )


def not_started(settings: ContextSettings, metrics: GatewayMetrics) -> Reply:
    """The 503 of a request that came before the lifespan connected the bus (stage
    ``startup``), for endpoints that find no context yet."""
    metrics.errors.labels("startup", "not_started").inc()
    return unavailable_reply(settings.retry_after_seconds)



class GatewayContext(Generic[S]):
    """A connected gateway (module docstring). Build it with ``open_gateway``; ``close`` it."""

    def __init__(
        self,
        settings: S,
        service: str,
        transport: Transport,
        bus: GatewayBus,
        audit: AuditLog,
        access: Access | None,
        metrics: GatewayMetrics,
    ) -> None:
        self.settings = settings
        self.service = service
        self.transport = transport
        self.bus = bus
        self.audit = audit
        self.access = access
        self.metrics = metrics
        self.publisher: Coalescer = bus.publisher
        self._warn = ThrottledWarning(log)

    @property
    def nc(self) -> Client:
        return self.bus.nc

    @property
    def js(self) -> JetStreamContext:
        return self.bus.js

    @property
    def guard(self) -> Access:
        """The access checks (``RuntimeError`` for a context opened with ``access=False``)."""
        if self.access is None:
            raise RuntimeError(f"{self.service} was opened without access checks")
        return self.access

    # -- 503 --------------------------------------------------------------------------------
    def unavailable(
        self, stage: str, kind: str, detail: str, message: str = BUS_UNAVAILABLE
    ) -> Reply:
        """The 503 for a dependency that did not answer at ``stage`` (counted as ``(stage,
        kind)`` in ``metrics.errors``, logged throttled with ``detail``); raise it."""
        self.metrics.errors.labels(stage, kind).inc()
        self._warn(
            "bus_unavailable", service=self.service, stage=stage, error_type=kind, detail=detail
        )
        return unavailable_reply(self.settings.retry_after_seconds, message)

    def fault(self, stage: str, exc: BaseException, message: str = BUS_UNAVAILABLE) -> Reply:
        """``unavailable`` for the exception ``exc`` (its ``error_type`` label)."""
        return self.unavailable(stage, error_type(exc), repr(exc), message)

    # -- access -----------------------------------------------------------------------------
    async def authenticate(
        self, key: str | None, ip: str | None, target: Target, missing: str = "missing API key"
    ) -> Granted:
        """``Access.authenticate`` (429/401/403, audited); the key store not answering → 503
        (stage ``auth``)."""
        try:
            return await self.guard.authenticate(key, ip, target, missing)
        except Reply:
            raise
        except Exception as exc:
            raise self.fault("auth", exc) from None

    def admit_sources(
        self, domain: str, groups: Mapping[str, Sequence[DataPoint]], received_at: datetime
    ) -> None:
        """``admit_points`` for several sources of one request together, all or nothing."""
        self.guard.admit_sources(
            domain, {s: (p.ts for p in points) for s, points in groups.items()}, received_at
        )

    # -- publish ----------------------------------------------------------------------------
    async def publish(
        self,
        domain: str,
        source_id: str,
        received_at: datetime,
        points: Sequence[DataPoint],
        rejections: Sequence[Rejection] = (),
    ) -> PublishOutcome:
        """One source's points (and rejections, best effort on ``dp.rejected.<transport>``)
        into the bundles of its partition; returns once JetStream acknowledged every bundle
        holding them (≤ ``publish_timeout_seconds``), else 503 (stage ``publish``)."""
        try:
            outcome = await self.publisher.publish(
                domain, source_id, received_at, points, rejections
            )
        except PublishError as exc:
            raise self.unavailable("publish", exc.error_type, str(exc)) from None
        if not outcome.rejected_published:
            self.metrics.errors.labels("publish_rejected", "not_acked").inc()
        return outcome

    async def publish_sources(
        self, domain: str, groups: Mapping[str, Sequence[DataPoint]], received_at: datetime
    ) -> int:
        """The points of several sources (source → points) under one deadline; the count once
        JetStream acknowledged them all, else 503 (stage ``publish``)."""
        publisher = self.publisher
        deadline = asyncio.get_running_loop().time() + publisher.timeout
        submitted = [
            publisher.submit(domain, source_id, received_at, points)
            for source_id, points in groups.items()
        ]
        try:
            for one in submitted:
                await settle(one, deadline)
        except PublishError as exc:
            raise self.unavailable("publish", exc.error_type, str(exc)) from None
        return sum(len(points) for points in groups.values())

    # -- lifecycle --------------------------------------------------------------------------
    async def ready(self) -> dict[str, bool]:
        """``/ready`` checks: NATS connected and the raw stream answering."""
        return await self.bus.ready()

    async def close(self) -> None:
        """Flush the audit trail, publish what is open and wait for its PubAcks, disconnect
        (unless the connection was handed in)."""
        await self.audit.close()
        await self.bus.close()


async def open_gateway(
    settings: S,
    service: str,
    transport: Transport,
    metrics: GatewayMetrics,
    *,
    linger_seconds: float,
    access: bool = True,
    nats_client: Client | None = None,
    connect: Connect | None = None,
) -> GatewayContext[S]:
    """Connect (``nats_client``: used, never closed; ``connect``: its client is closed by
    ``close``; default ``connect_nats(settings)``), ensure the JetStream objects, open the key
    store, the ``Coalescer`` (``linger_seconds``) and the audit log, within
    ``startup_timeout_seconds``. ``access`` also builds the ``Access`` checks, whose limits are
    the settings' ``RateLimitSettings`` fields."""
    bus = await open_gateway_bus(
        settings,
        service,
        transport,
        linger_seconds=linger_seconds,
        nats_client=nats_client,
        connect=connect,
        observe_ack_latency=None if metrics.ack_latency is None else metrics.ack_latency.observe,
        observe_bundle_points=(
            None if metrics.bundle_points is None else metrics.bundle_points.observe
        ),
    )
    audit = AuditLog(bus.js, settings.namespace, service, timeout=settings.publish_timeout_seconds)
    checks = None
    if access:
        if not isinstance(settings, RateLimitSettings):
            raise TypeError(f"{service}'s settings have no rate limits (RateLimitSettings)")
        checks = Access(bus.keys, IngestLimiter(settings), audit)
    return GatewayContext(settings, service, transport, bus, audit, checks, metrics)
