"""What the handlers share: the connected bus objects, the reader, the fleet sampler, and the
access checks (key from the ``X-API-Key`` header or the console's login cookie)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from nats.aio.client import Client
from nats.js import JetStreamContext
from starlette.requests import HTTPConnection, Request

from console.fleet_status import FleetSampler
from console.queries import Reader
from console.scope import ReadScope
from console.settings import ConsoleSettings
from tributary_access.access import API_KEY_HEADER, RequestGuard
from tributary_access.apikeys import Action, ApiKeyStore, Denied, Granted
from tributary_access.audit import AuditLog
from tributary_access.guard import client_ip
from tributary_access.ratelimit import IngestLimiter
from tributary_contracts import AuditAction
from tributary_runtime.devices import DeviceRegistry
from tributary_runtime.ops import Reply
from tributary_runtime.stream_configs import StreamConfigBucket

KEY_COOKIE = "tributary_console_key"
API_KEY_HEADER_BYTES = API_KEY_HEADER.lower().encode()


class CookieKey:
    """ASGI middleware: a request without an ``X-API-Key`` header but with the console's login
    cookie presents the cookie's key in that header, so pages and API are checked alike."""

    def __init__(self, app: Any) -> None:
        self.app = app

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "http":
            headers = scope["headers"]
            if not any(k == API_KEY_HEADER_BYTES for k, _ in headers):
                key = HTTPConnection(scope).cookies.get(KEY_COOKIE)
                if key:
                    scope = {**scope, "headers": [*headers, (API_KEY_HEADER_BYTES, key.encode())]}
        await self.app(scope, receive, send)


@dataclass
class Bus:
    """What the lifespan connects."""

    nc: Client
    js: JetStreamContext
    keys: ApiKeyStore
    configs: StreamConfigBucket
    jobs_kv: Any
    devices: DeviceRegistry
    audit: AuditLog
    guard: RequestGuard


@dataclass
class Caller:
    """Who asks: the key's record and what it may read."""

    granted: Granted
    scope: ReadScope

    @property
    def role(self) -> str:
        return self.granted.record.role.value


class Context:
    def __init__(self, settings: ConsoleSettings) -> None:
        self.settings = settings
        self.ns = settings.namespace
        self.reader = Reader(settings.postgres_read_dsn, settings.postgres_timeout_seconds)
        self.sampler = FleetSampler(settings.service_urls, settings.fleet_scrape_seconds)
        self.limiter = IngestLimiter(settings)
        self.bus: Bus | None = None

    def connected(self) -> Bus:
        if self.bus is None:
            raise Reply(
                503,
                {
                    "error": "the console is not connected to NATS yet; retry later",
                    "retry_after": 2,
                },
                {"Retry-After": "2"},
            )
        return self.bus

    async def caller(self, request: Request) -> Caller:
        """The request's key (``X-API-Key``; the pages' login cookie arrives as that header,
        ``CookieKey``), checked by the services' shared ``RequestGuard``: Reply 429/401/503."""
        bus = self.connected()
        bus.guard.admit(request)
        try:
            granted = await bus.guard.authenticate(request)
        except Reply:
            raise
        except Exception as exc:
            raise Reply(
                503,
                {
                    "error": f"the api-keys bucket did not answer ({type(exc).__name__}); "
                    "retry later"
                },
                {"Retry-After": "2"},
            ) from None
        return Caller(granted, ReadScope.of(granted.record))

    async def login(self, request: Request, key: str) -> Caller:
        """``caller`` for a key typed into the login form (same checks, same audit)."""
        headers = [(k, v) for k, v in request.scope["headers"] if k != API_KEY_HEADER_BYTES]
        scope = {**request.scope, "headers": [*headers, (API_KEY_HEADER_BYTES, key.encode())]}
        return await self.caller(Request(scope))

    def refuse(self, request: Request, denied: Denied, target: str | None = None) -> None:
        """Audit the refusal and raise its Reply."""
        bus = self.connected()
        action = AuditAction.AUTH_FAILED if denied.status == 401 else AuditAction.ACCESS_DENIED
        bus.audit.record_soon(
            bus.audit.event(
                action,
                outcome="failure",
                key_id=denied.key_id,
                role=denied.role,
                client_ip=client_ip(request.scope),
                target=target or f"{request.method} {request.url.path}"[:1024],
                reason=denied.reason,
            )
        )
        raise Reply(denied.status, {"error": denied.reason})

    def check_read(self, request: Request, caller: Caller, domain: str, source_id: str) -> None:
        """403 (audited) when the caller may not read this domain/source."""
        reason = caller.scope.refusal(domain, source_id)
        if reason is not None:
            self.refuse(
                request,
                Denied(403, reason, caller.granted.key_id, caller.role),
                f"read {domain}/{source_id}"[:1024],
            )

    def check_admin(self, request: Request, caller: Caller, action: Action) -> None:
        self.connected().guard.check(request, caller.granted, action)
