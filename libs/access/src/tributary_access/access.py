"""The access checks of every gateway, in order: client IP rate limit (429), API key (401), role
and scope (403), the source's point budgets (429/413) — each refusal of a key audited.

``Access`` decides them transport-neutrally: it takes the presented key, the client address and
a ``target`` text (what was asked, for the audit trail) and raises ``Reply`` (status, ``{"error":
reason[, "retry_after"]}``, ``Retry-After`` on 429). HTTP services answer the ``Reply`` as it is;
the WebSocket gateway maps its status to its protocol's error codes. ``RequestGuard`` is the same
for a Starlette ``Request`` (ip, target and ``X-API-Key`` taken from it).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import NoReturn

from starlette.requests import Request

from tributary_access.apikeys import Action, ApiKeyStore, Denied, Granted, check_access
from tributary_access.audit import AuditLog
from tributary_access.guard import Scope, client_ip, raw_header
from tributary_access.ratelimit import IngestLimiter, Refusal, split_backfill
from tributary_contracts import AuditAction
from tributary_runtime.ops import Reply

Target = str | Callable[[], str]
"""What was asked, for the audit trail: the text, or a function making it (called only when a
refusal is audited, so an admitted request does not pay for it)."""

API_KEY_HEADER = "X-API-Key"
API_KEY_NAME = API_KEY_HEADER.lower().encode()
"""The header's name as ASGI scopes carry it (``raw_header``)."""


def refusal_reply(refusal: Refusal) -> Reply:
    """A limiter's ``Refusal`` as the reply: 429 with ``retry_after`` and ``Retry-After``, or
    413 (more points than a burst: never fits)."""
    body: dict[str, object] = {"error": refusal.reason}
    if refusal.status == 429:
        body["retry_after"] = refusal.retry_after
    return Reply(refusal.status, body, refusal.headers)


def target_of(scope: Scope) -> str:
    """What an HTTP request (its ASGI scope) asks, as audit events name it: ``"<METHOD>
    <path>"``."""
    return f"{scope.get('method', 'GET')} {scope.get('root_path', '')}{scope['path']}"[:1024]


@dataclass
class Access:
    """The decisions of the module docstring; every method raises ``Reply`` or returns.

    ``keys`` errors (the bucket not answering) propagate: the caller answers them 503."""

    keys: ApiKeyStore
    limiter: IngestLimiter
    audit: AuditLog

    def admit(self, ip: str | None, what: str = "requests") -> None:
        """Take one token of the client IP's budget (a request, frame or upload), or 429."""
        refusal = self.limiter.admit(ip, what)
        if refusal is not None:
            raise refusal_reply(refusal)

    async def authenticate(
        self, key: str | None, ip: str | None, target: Target, missing: str = "missing API key"
    ) -> Granted:
        """The grant of ``key``; 429 once ``ip`` used up its failed-authentication budget, 401
        (``missing`` as the reason when there is no key) or 403, audited."""
        if (refusal := self.limiter.admit_auth(ip)) is not None:
            raise refusal_reply(refusal)
        result = await self.keys.authenticate(key)
        if isinstance(result, Denied):
            if result.status == 401:
                self.limiter.auth_failed(ip)
                if not key:
                    result = Denied(401, missing)
            raise self._refuse(result, ip, target)
        return result

    def check(
        self,
        granted: Granted,
        action: Action,
        ip: str | None,
        target: Target,
        domain: str | None = None,
        source_id: str | None = None,
    ) -> None:
        """403 (audited) when ``granted``'s role or scope does not allow ``action`` here."""
        problem = check_access(granted.record, action, domain, source_id)
        if problem is not None:
            self.deny(granted, problem, ip, target)

    def deny(self, granted: Granted, reason: str, ip: str | None, target: Target) -> NoReturn:
        """Raise (and audit) 403 with ``reason``."""
        raise self._refuse(
            Denied(403, reason, granted.key_id, granted.record.role.value), ip, target
        )

    def admit_points(
        self, domain: str, source_id: str, timestamps: Iterable[datetime], received_at: datetime
    ) -> None:
        """Spend the points (by their timestamps: live or backfill) of one source's request or
        message from its budgets, all or nothing: 429, or 413 beyond a burst."""
        live, backfill = split_backfill(
            timestamps, received_at, self.limiter.backfill_age_seconds
        )
        refusal = self.limiter.admit_points(domain, source_id, live, backfill)
        if refusal is not None:
            raise refusal_reply(refusal)

    def admit_sources(
        self,
        domain: str,
        timestamps: Mapping[str, Iterable[datetime]],
        received_at: datetime,
    ) -> None:
        """``admit_points`` for several sources of one request together (source → its points'
        timestamps): every budget is checked first, then all are spent, or none."""
        age = self.limiter.backfill_age_seconds
        counts = {
            source: split_backfill(stamps, received_at, age)
            for source, stamps in timestamps.items()
        }
        refusal = self.limiter.admit_sources(domain, counts)
        if refusal is not None:
            raise refusal_reply(refusal)

    def _refuse(self, denied: Denied, ip: str | None, target: Target) -> Reply:
        action = AuditAction.AUTH_FAILED if denied.status == 401 else AuditAction.ACCESS_DENIED
        self.audit.record_soon(
            self.audit.event(
                action,
                outcome="failure",
                key_id=denied.key_id,
                role=denied.role,
                client_ip=ip,
                target=target if isinstance(target, str) else target(),
                reason=denied.reason,
            )
        )
        return Reply(denied.status, {"error": denied.reason})


@dataclass
class RequestGuard:
    """``Access`` for a Starlette ``Request``: its client IP, ``"<METHOD> <path>"`` as the
    target and its ``X-API-Key`` header."""

    keys: ApiKeyStore
    limiter: IngestLimiter
    audit: AuditLog
    access: Access = field(init=False)

    def __post_init__(self) -> None:
        self.access = Access(self.keys, self.limiter, self.audit)

    def admit(self, request: Request, what: str = "requests") -> None:
        self.access.admit(client_ip(request.scope), what)

    async def authenticate(self, request: Request) -> Granted:
        return await self.access.authenticate(
            raw_header(request.scope, API_KEY_NAME),
            client_ip(request.scope),
            lambda: target_of(request.scope),
            f"missing {API_KEY_HEADER} header",
        )

    def check(
        self,
        request: Request,
        granted: Granted,
        action: Action,
        domain: str | None = None,
        source_id: str | None = None,
    ) -> None:
        self.access.check(
            granted, action, client_ip(request.scope), lambda: target_of(request.scope), domain,
            source_id,
        )

    def deny(self, request: Request, granted: Granted, reason: str) -> NoReturn:
        self.access.deny(granted, reason, client_ip(request.scope), target_of(request.scope))
