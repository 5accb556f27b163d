"""The request-side access checks of the HTTP services (gateway-http, csv-importer), in order:
client IP rate limit (429), API key (401), role and scope (403) — each refusal audited.

The WebSocket gateway makes the same decisions with the same objects (``ApiKeyStore.authorize``,
``IngestLimiter``, ``AuditLog``), answering them in its protocol instead of HTTP statuses.
"""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from tributary_access.apikeys import Action, ApiKeyStore, Denied, Granted, check_access
from tributary_access.audit import AuditLog
from tributary_access.guard import client_ip, raw_header
from tributary_access.ratelimit import IngestLimiter, Refusal
from tributary_contracts import AuditAction
from tributary_runtime.ops import Reply

API_KEY_HEADER = "X-API-Key"
_API_KEY_NAME = API_KEY_HEADER.lower().encode()


def refusal_reply(refusal: Refusal) -> Reply:
    body: dict[str, object] = {"error": refusal.reason}
    if refusal.status == 429:
        body["retry_after"] = refusal.retry_after
    return Reply(refusal.status, body, refusal.headers)


def target_of(request: Request) -> str:
    return f"{request.method} {request.url.path}"[:1024]


@dataclass
class RequestGuard:
    """See the module docstring. Methods raise ``Reply`` (4xx) and return on success."""

    keys: ApiKeyStore
    limiter: IngestLimiter
    audit: AuditLog

    def admit(self, request: Request, what: str = "requests") -> None:
        """Take one token of the client IP's budget, or raise 429."""
        refusal = self.limiter.admit(client_ip(request.scope), what)
        if refusal is not None:
            raise refusal_reply(refusal)

    def _refuse(self, request: Request, denied: Denied, target: str | None = None) -> Reply:
        action = AuditAction.AUTH_FAILED if denied.status == 401 else AuditAction.ACCESS_DENIED
        self.audit.record_soon(
            self.audit.event(
                action,
                outcome="failure",
                key_id=denied.key_id,
                role=denied.role,
                client_ip=client_ip(request.scope),
                target=target or target_of(request),
                reason=denied.reason,
            )
        )
        return Reply(denied.status, {"error": denied.reason})

    async def authenticate(self, request: Request) -> Granted:
        """The key of the ``X-API-Key`` header, or 401/403 (store errors propagate)."""
        ip = client_ip(request.scope)
        if (refusal := self.limiter.admit_auth(ip)) is not None:
            raise refusal_reply(refusal)
        result = await self.keys.authenticate(raw_header(request.scope, _API_KEY_NAME))
        if isinstance(result, Denied):
            if result.status == 401:
                self.limiter.auth_failed(ip)
            if result.reason == "missing API key":
                result = Denied(401, f"missing {API_KEY_HEADER} header")
            raise self._refuse(request, result)
        return result

    def check(
        self,
        request: Request,
        granted: Granted,
        action: Action,
        domain: str | None = None,
        source_id: str | None = None,
        target: str | None = None,
    ) -> None:
        """403 when ``granted``'s role or scope does not allow ``action`` here."""
        problem = check_access(granted.record, action, domain, source_id)
        if problem is not None:
            self.deny(request, granted, problem, target)

    def deny(
        self, request: Request, granted: Granted, reason: str, target: str | None = None
    ) -> None:
        """Raise (and audit) 403 with ``reason``."""
        denied = Denied(403, reason, granted.key_id, granted.record.role.value)
        raise self._refuse(request, denied, target)

    async def authorize(
        self,
        request: Request,
        action: Action,
        domain: str | None = None,
        source_id: str | None = None,
    ) -> Granted:
        granted = await self.authenticate(request)
        self.check(request, granted, action, domain, source_id)
        return granted
