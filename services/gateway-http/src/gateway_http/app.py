"""Wiring: Starlette app with ``POST /ingest/data``, the config API, ``/health``, ``/ready``,
``/metrics``.

The legacy IoT endpoints (``/ingest/packets``, ``/ingest/readings[/bulk]``,
``/devices/{uuid}/readings``, ``/sensors/{id}/status``) live in ``legacy``, the legacy service's
operational probes (``/health/postgres``, ``/ingest/health``, ``/mqtt/*``, ``/resilience/health``,
``/diagnostics``) in ``legacy_ops``; they are wired here.

``POST /ingest/data`` consumes ``{"source_id", "domain", "data_points": [...]}`` with an
``X-API-Key`` and produces a ``PointBatch`` that joins the ``PointBundle`` of its partition on
``dp.raw.<domain>.part.<p>`` (``Coalescer``; rejected points on ``dp.rejected.http``); it
replies 202 only after JetStream acknowledged the bundles holding its points.
``GET|PUT|DELETE /streams/{domain}/{source_id}/{stream_id}/config`` reads (any key) and writes
(admin keys) StreamConfigs in the ``stream-configs`` bucket (``config_api``). ``/keys`` manages API
keys (admin keys, ``keys_api``). ``POST /devices/provision`` registers IoT devices by an HMAC-signed
request (``provision``). ``/openapi.json`` serves the API's OpenAPI document.

Every request first spends a token of its client IP's rate budget (429), then shows its
``X-API-Key`` (401), then its role and scope are checked against what it asks (403); ingest
requests then spend their points from the source's live/backfill budgets (429) before anything
is published. Refusals and every change are published as audit events (``audit.gateway-http.*``).
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from importlib import resources
from typing import Any

import orjson
import structlog
from nats.aio.client import Client
from nats.js import JetStreamContext
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from gateway_http import config_api, keys_api
from gateway_http.deprecation import LegacyDeprecation
from gateway_http.legacy import LegacyIot
from gateway_http.legacy_ops import LegacyOps
from gateway_http.metrics import (
    ACK_LATENCY,
    BUNDLE_POINTS,
    CONFIG_REQUESTS,
    ERRORS,
    POINTS_PUBLISHED,
    POINTS_RECEIVED,
    POINTS_REJECTED,
    count_reply,
)
from gateway_http.normalize import EnvelopeError, normalize_request
from gateway_http.provision import Provisioning
from gateway_http.settings import GatewayHttpSettings
from tributary_access.access import API_KEY_HEADER, RequestGuard, refusal_reply
from tributary_access.apikeys import Action, ApiKeyStore, Granted
from tributary_access.audit import AuditLog
from tributary_access.guard import HeaderLimits, client_ip, raw_header
from tributary_access.key_admin import Actor
from tributary_access.ratelimit import IngestLimiter, split_backfill
from tributary_contracts import (
    DP_RAW,
    LIVE_SETTINGS,
    STREAM_CONFIGS_BUCKET,
    SWITCHES_BUCKET,
    AuditAction,
    Transport,
)
from tributary_ingest.batches import PublishError, error_type
from tributary_ingest.bus import Connect, GatewayBus, open_gateway_bus
from tributary_ingest.coalesce import Coalescer
from tributary_ingest.ledger import RawLedger
from tributary_ingest.points import MalformedJson, parse_json
from tributary_runtime import ops
from tributary_runtime.logs import ThrottledWarning
from tributary_runtime.ops import Reply, ops_routes
from tributary_runtime.stream_configs import ConfigProblem, StreamConfigBucket
from tributary_runtime.switches import LiveSwitches, parse_bool, parse_list

SERVICE_NAME = "gateway-http"
INGEST_PATH = "/ingest/data"
OPENAPI_DOCUMENT = (
    resources.files("gateway_http").joinpath("openapi.json").read_bytes()
)
__all__ = ["API_KEY_HEADER", "SERVICE_NAME", "create_app"]

log = structlog.get_logger("gateway_http")

Answer = tuple[int, dict[str, Any], dict[str, str] | None]
"""A reply as (status, JSON body, extra headers)."""


def json_response(
    status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> Response:
    count_reply(status)
    return ops.json_response(status, body, headers)


async def send_json(
    send: Send, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
) -> None:
    """``json_response`` written straight to the ASGI ``send`` (no ``Response`` object)."""
    count_reply(status)
    payload = orjson.dumps(body)
    raw_headers = [
        (b"content-length", str(len(payload)).encode()),
        (b"content-type", b"application/json"),
    ]
    if headers:
        raw_headers.extend(
            (k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()
        )
    await send({"type": "http.response.start", "status": status, "headers": raw_headers})
    await send({"type": "http.response.body", "body": payload})


class IngestShortcut:
    """ASGI middleware: ``POST /ingest/data`` goes straight to ``endpoint``, past Starlette's
    exception middleware, router and ``Request``/``Response`` objects (about a quarter of a
    1-point request's CPU); everything else (other methods too) goes to the router. It sits
    inside ``HeaderLimits``, so header bounds apply alike."""

    def __init__(self, app: ASGIApp, endpoint: ASGIApp) -> None:
        self.app = app
        self.endpoint = endpoint

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] == INGEST_PATH and scope["method"] == "POST":
            await self.endpoint(scope, receive, send)
        else:
            await self.app(scope, receive, send)


@dataclass
class Bus:
    """What the lifespan connects; the handlers use it."""

    nc: Client
    js: JetStreamContext
    keys: ApiKeyStore
    publisher: Coalescer
    configs: StreamConfigBucket
    gateway: GatewayBus
    guard: RequestGuard
    audit: AuditLog
    ledger: RawLedger
    switches: LiveSwitches


def create_app(
    settings: GatewayHttpSettings,
    *,
    nats_client: Client | None = None,
    connect: Connect | None = None,
) -> Starlette:
    """Build the gateway. ``nats_client`` (used, never closed) or ``connect`` (its client is
    closed on shutdown) replace the default ``connect_nats(settings)`` connection."""
    ns = settings.namespace
    raw_stream = ns.stream(DP_RAW)
    state: dict[str, Bus] = {}
    warn_unavailable = ThrottledWarning(log)
    limiter = IngestLimiter(settings)
    parsed_domains: dict[str, frozenset[str]] = {}

    def live(name: str) -> str | None:
        """A live setting's bucket value (``switches``), None when the environment's holds."""
        bus = state.get("bus")
        return bus.switches.value(name) if bus is not None else None

    def universal_api_enabled() -> bool:
        value = live("UNIVERSAL_API_ENABLED")
        if value is None:
            return settings.universal_api_enabled
        try:
            return parse_bool(value)
        except ValueError:
            ERRORS.labels("switches", "invalid_value").inc()
            return settings.universal_api_enabled

    def disabled_domains() -> frozenset[str]:
        value = live("DISABLED_DOMAINS")
        if value is None:
            return settings.disabled_domain_set
        if value not in parsed_domains:
            parsed_domains.clear()
            parsed_domains[value] = parse_list(value)
        return parsed_domains[value]

    @asynccontextmanager
    async def lifespan(_: Starlette) -> AsyncIterator[None]:
        gateway = await open_gateway_bus(
            settings,
            SERVICE_NAME,
            Transport.HTTP,
            nats_client=nats_client,
            connect=connect,
            linger_seconds=settings.bundle_linger_ms / 1000,
            observe_ack_latency=ACK_LATENCY.observe,
            observe_bundle_points=BUNDLE_POINTS.observe,
        )
        configs = StreamConfigBucket(await gateway.js.key_value(ns.bucket(STREAM_CONFIGS_BUCKET)))
        audit = AuditLog(gateway.js, ns, SERVICE_NAME, timeout=settings.publish_timeout_seconds)
        guard = RequestGuard(gateway.keys, limiter, audit)
        ledger = RawLedger(
            gateway.js, ns, Transport.HTTP, settings.ledger_selector,
            timeout=settings.publish_timeout_seconds,
            max_payload_bytes=settings.raw_ledger_payload_bytes,
            on_failure=lambda exc: ERRORS.labels("ledger", type(exc).__name__).inc(),
        )
        switches = LiveSwitches(
            await gateway.js.key_value(ns.bucket(SWITCHES_BUCKET)), SERVICE_NAME,
            LIVE_SETTINGS[SERVICE_NAME],
        )
        await switches.start(settings.startup_timeout_seconds)
        state["bus"] = Bus(
            gateway.nc, gateway.js, gateway.keys, gateway.publisher, configs, gateway, guard, audit,
            ledger, switches,
        )
        await legacy.start(gateway.js)
        await provisioning.start(gateway.js)
        log.info("started", port=settings.port, nats_url=settings.nats_url, stream=raw_stream)
        try:
            yield
        finally:
            state.clear()
            await switches.stop()
            await legacy.stop()
            await audit.close()
            await gateway.close()

    async def ready_check() -> dict[str, bool]:
        bus = state.get("bus")
        return await bus.gateway.ready() if bus else {"nats": False, "stream": False}

    def unavailable(
        stage: str,
        kind: str,
        detail: str,
        message: str = "the message bus did not acknowledge the data; nothing was accepted, "
        "retry later",
    ) -> Reply:
        ERRORS.labels(stage, kind).inc()
        warn_unavailable("bus_unavailable", stage=stage, error_type=kind, detail=detail)
        return Reply(
            503,
            {"error": message, "retry_after": settings.retry_after_seconds},
            {"Retry-After": str(settings.retry_after_seconds)},
        )

    async def authenticate(request: Request, bus: Bus) -> Granted:
        """Rate budget of the client IP (429), then the key (401/403); store down → 503."""
        bus.guard.admit(request)
        try:
            return await bus.guard.authenticate(request)
        except Reply:
            raise
        except Exception as exc:
            raise unavailable("auth", error_type(exc), repr(exc)) from None

    async def authorize(request: Request, bus: Bus, action: Action = Action.WRITE_POINTS) -> None:
        """The legacy IoT endpoints' check: the key, then its role and scope (domain iot)."""
        granted = await authenticate(request, bus)
        bus.guard.check(request, granted, action, "iot" if action is Action.WRITE_POINTS else None)

    async def read_body(request: Request) -> bytes:
        limit = settings.max_body_bytes
        too_large = Reply(413, {"error": f"request body is larger than {limit} bytes"})
        declared = raw_header(request.scope, b"content-length")
        if declared is not None:
            try:
                if int(declared) > limit:
                    raise too_large
            except ValueError:
                raise Reply(400, {"error": "Content-Length header is not an integer"}) from None
        # The ASGI messages directly: request.stream()'s async generator cost more than the rest
        # of reading a small body.
        chunks: list[bytes] = []
        size = 0
        receive = request.receive
        while True:
            message = await receive()
            if message["type"] != "http.request":  # http.disconnect
                raise Reply(400, {"error": "the client disconnected before sending the body"})
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > limit:
                raise too_large
            chunks.append(chunk)
            if not message.get("more_body", False):
                return chunks[0] if len(chunks) == 1 else b"".join(chunks)

    async def record_refused(
        bus: Bus, parsed: dict[str, Any], received_at: datetime, body: bytes, status: int,
        error: str,
    ) -> None:
        domain, source = parsed.get("domain"), parsed.get("source_id")
        if isinstance(domain, str) and isinstance(source, str):
            await bus.ledger.record(domain, source, received_at, body, status=status, error=error)

    async def ingest(request: Request, received_at: datetime) -> Answer:
        bus = state.get("bus")
        if bus is None:
            raise unavailable("startup", "not_started", "lifespan has not connected the bus")
        granted = await authenticate(request, bus)
        body = await read_body(request)
        if not body:
            raise Reply(400, {"error": "request body is empty; expected a JSON object"})
        try:
            parsed = parse_json(body)
            normalized = normalize_request(parsed, received_at, settings.max_points_per_request)
        except MalformedJson as exc:
            raise Reply(400, {"error": str(exc)}) from None
        except EnvelopeError as exc:
            status = 413 if exc.too_large else 422
            if isinstance(parsed, dict):  # a selected source's refused input goes to the ledger
                await record_refused(bus, parsed, received_at, body, status, exc.message)
            raise Reply(status, {"error": exc.message, "field": exc.field}) from None

        bus.guard.check(
            request, granted, Action.WRITE_POINTS, normalized.domain, normalized.source_id
        )
        if normalized.domain in disabled_domains():
            raise Reply(403, {"error": f"domain {normalized.domain!r} is disabled on this "
                              "gateway (DISABLED_DOMAINS)", "field": "domain"})
        accepted, rejected = normalized.accepted, normalized.rejected
        live, backfill = split_backfill(
            (p.ts for p in accepted), received_at, limiter.backfill_age_seconds
        )
        refusal = limiter.admit_points(normalized.domain, normalized.source_id, live, backfill)
        if refusal is not None:
            raise refusal_reply(refusal)
        POINTS_RECEIVED.inc(len(accepted) + len(rejected))
        for rejection in rejected:
            POINTS_REJECTED.labels(rejection.code).inc()
        try:
            outcome = await bus.publisher.publish(
                normalized.domain, normalized.source_id, received_at, accepted, rejected
            )
        except PublishError as exc:
            raise unavailable("publish", exc.error_type, str(exc)) from None
        if not outcome.rejected_published:
            ERRORS.labels("publish_rejected", "not_acked").inc()
        POINTS_PUBLISHED.inc(len(accepted))
        reply = [r.to_reply() for r in rejected]
        if bus.ledger.wants(normalized.domain, normalized.source_id):  # opt-in raw ledger
            await bus.ledger.record(
                normalized.domain, normalized.source_id, received_at, body, accepted=accepted,
                rejections=rejected, status=202 if accepted else 422,
                content_type=request.headers.get("content-type"),
            )
        if not accepted:
            # Nothing was accepted: a 2xx would tell a status-only client that its data is in.
            return (
                422,
                {"error": "no data point was accepted", "accepted": 0, "rejected": reply},
                None,
            )
        return 202, {"accepted": len(accepted), "rejected": reply}, None

    async def ingest_reply(request: Request) -> Answer:
        """POST /ingest/data: points → a bundle on dp.raw.<domain>.part.<p>, 202 after its
        PubAck."""
        if not universal_api_enabled():
            return (
                404,
                {"error": "POST /ingest/data is not enabled on this gateway "
                 "(UNIVERSAL_API_ENABLED=false)"},
                None,
            )
        try:
            return await ingest(request, datetime.now(UTC))
        except Reply as reply:
            return reply.status, reply.body, reply.headers
        except Exception as exc:
            ERRORS.labels("handler", "unexpected").inc()
            log.exception("ingest_failed", error=repr(exc))
            return 500, {"error": "internal error; it was logged"}, None

    async def ingest_endpoint(scope: Scope, receive: Receive, send: Send) -> None:
        """``ingest_reply`` as a plain ASGI app (``IngestShortcut``)."""
        await send_json(send, *await ingest_reply(Request(scope, receive)))

    async def ingest_data(request: Request) -> Response:
        """The same as a Starlette route (reached only without ``IngestShortcut``)."""
        return json_response(*await ingest_reply(request))

    async def config(request: Request) -> config_api.ConfigReply:
        bus = state.get("bus")
        if bus is None:
            raise unavailable("startup", "not_started", "lifespan has not connected the bus")
        raw_path = request.scope.get("raw_path") or request.url.path.encode()
        granted = await authenticate(request, bus)
        action = Action.READ if request.method in ("GET", "HEAD") else Action.MANAGE_CONFIGS
        bus.guard.check(request, granted, action)
        try:
            scope = config_api.scope_from_path(raw_path)
        except ConfigProblem as exc:
            return config_api.ConfigReply(422, exc.to_reply())
        if scope is None:
            return config_api.ConfigReply(
                404, {"error": f"not found; the config API is {config_api.PATH_SHAPE}"}
            )
        try:
            if request.method in ("GET", "HEAD"):
                return await config_api.get_config(bus.configs, scope)
            if request.method == "PUT":
                body = await read_body(request)
                reply = await config_api.put_config(
                    bus.configs, scope, body, request.headers.get("if-match")
                )
                audit_action = AuditAction.CONFIG_CHANGED
            elif request.method == "DELETE":
                reply = await config_api.delete_config(bus.configs, scope)
                audit_action = AuditAction.CONFIG_DELETED
            else:
                return config_api.ConfigReply(
                    405, {"error": f"method {request.method} not allowed"}
                )
        except Reply:
            raise
        except Exception as exc:
            raise unavailable(
                "config",
                error_type(exc),
                repr(exc),
                "the stream-configs bucket did not answer; nothing was changed, retry later",
            ) from None
        if reply.status < 300:
            version = (reply.body or {}).get("version")
            await bus.audit.record(
                bus.audit.event(
                    audit_action,
                    key_id=granted.key_id,
                    role=granted.record.role.value,
                    client_ip=client_ip(request.scope),
                    target=str(scope),
                    reason=f"{request.method} config of {scope}",
                    details={"version": version} if version is not None else {},
                )
            )
        return reply

    async def stream_config(request: Request) -> Response:
        """GET|PUT|DELETE /streams/{domain}/{source_id}/{stream_id}/config: StreamConfigs in
        the stream-configs bucket (admin only)."""
        try:
            reply = await config(request)
        except Reply as early:
            reply = config_api.ConfigReply(early.status, early.body, early.headers)
        except Exception as exc:
            ERRORS.labels("config_handler", "unexpected").inc()
            log.exception("config_request_failed", error=repr(exc))
            reply = config_api.ConfigReply(500, {"error": "internal error; it was logged"})
        CONFIG_REQUESTS.labels(request.method, str(reply.status)).inc()
        if reply.body is None:
            return Response(status_code=reply.status, headers=reply.headers)
        return Response(
            orjson.dumps(reply.body), reply.status, reply.headers, media_type="application/json"
        )

    async def keys(request: Request) -> Response:
        """GET|POST /keys, GET|DELETE /keys/{id}, POST /keys/{id}/rotate (admin only)."""
        try:
            bus = state.get("bus")
            if bus is None:
                raise unavailable("startup", "not_started", "lifespan has not connected the bus")
            granted = await authenticate(request, bus)
            bus.guard.check(request, granted, Action.MANAGE_KEYS)
            parts = request.url.path.strip("/").split("/")
            if len(parts) > 3 or (len(parts) == 3 and parts[2] != "rotate"):
                raise Reply(404, {"error": "not found; see /keys, /keys/{id}, /keys/{id}/rotate"})
            key_id = parts[1] if len(parts) > 1 else None
            body = await read_body(request) if request.method == "POST" else b""
            actor = Actor(granted.key_id, granted.record.role.value, client_ip(request.scope))
            try:
                status, reply = await keys_api.handle(
                    request.method, key_id, len(parts) == 3, body, bus.keys, bus.audit, actor,
                    settings.key_rotation_overlap_seconds,
                )
            except Reply:
                raise
            except Exception as exc:
                raise unavailable(
                    "keys", error_type(exc), repr(exc),
                    "the api-keys bucket did not answer; retry later",
                ) from None
        except Reply as early:
            status, reply = early.status, early.body
            return json_response(status, reply, early.headers)
        except Exception as exc:
            ERRORS.labels("keys_handler", "unexpected").inc()
            log.exception("keys_request_failed", error=repr(exc))
            return json_response(500, {"error": "internal error; it was logged"})
        return json_response(status, reply, {"Cache-Control": "no-store"})

    async def openapi(_: Request) -> Response:
        return Response(OPENAPI_DOCUMENT, media_type="application/json")

    async def http_error(_: Request, exc: Exception) -> Response:
        assert isinstance(exc, HTTPException)
        return Response(
            orjson.dumps({"error": exc.detail}),
            exc.status_code,
            exc.headers,
            media_type="application/json",
        )

    legacy = LegacyIot(settings, lambda: state.get("bus"), authorize, read_body, unavailable)
    legacy_ops = LegacyOps(
        settings,
        lambda: state.get("bus"),
        authorize,
        legacy.postgres,
        lambda: legacy.registry is not None,
    )
    provisioning = Provisioning(
        settings, lambda: state.get("bus"), lambda: legacy.registry, read_body, unavailable
    )
    routes = [
        Route(INGEST_PATH, ingest_data, methods=["POST"]),
        *legacy.routes(),
        *legacy_ops.routes(),
        *provisioning.routes(),
        Route("/streams/{rest:path}", stream_config, methods=["GET", "PUT", "DELETE"]),
        Route("/keys", keys, methods=["GET", "POST"]),
        Route("/keys/{rest:path}", keys, methods=["GET", "POST", "DELETE"]),
        Route("/openapi.json", openapi, methods=["GET"]),
        *ops_routes(ready_check),
    ]
    app = Starlette(
        routes=routes, lifespan=lifespan, exception_handlers={HTTPException: http_error}
    )
    app.add_middleware(LegacyDeprecation, settings=settings)
    app.add_middleware(IngestShortcut, endpoint=ingest_endpoint)
    app.add_middleware(  # outermost of ours: header bounds apply to the shortcut as well
        HeaderLimits, max_bytes=settings.max_header_bytes, max_count=settings.max_header_count
    )
    return app
