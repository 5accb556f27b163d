"""Audit trail (ISO 27001 A.12.4): ``AuditEvent``s published on ``audit.<service>.<action>``.

writer-postgres stores them in ``ingestion_audit_log``. Changes (keys, configs) are recorded with
``await record(...)`` once the change is made; refusals (401/403) with ``record_soon(...)``, which
publishes in the background so a flood of bad keys costs the request path nothing — at most
``max_pending`` publishes are in flight, beyond that events are counted as dropped and logged
once in a while.

Failed authentications (``auth_failed``: no key, or a bad one — anyone can cause them) are
aggregated so nobody can write the audit trail at the rate they can send requests: the first of
a client address in a window (``failure_window`` s, default 60) is recorded at once; the ones
after it are counted and recorded as one event when the window ends ("… and N more times",
``details.repeated``). At most ``max_failure_clients`` addresses are tracked per window; failures
from further addresses are counted into one event of their own. So they cost the trail at most
two events per client address per window. Refusals of an authenticated key (``access_denied``)
are recorded one by one.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import UTC, datetime
from typing import Any, Protocol

import structlog
from prometheus_client import Counter

from tributary_contracts import MSG_ID_HEADER, AuditAction, AuditEvent, Namespace
from tributary_contracts.jetstream import AUDIT

log = structlog.get_logger("tributary_access.audit")

AUDIT_EVENTS = Counter(
    "tributary_audit_events", "Audit events by action and result.", ["action", "result"]
)


class Publisher(Protocol):
    async def publish(
        self,
        subject: str,
        payload: bytes = b"",
        timeout: float | None = None,
        stream: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> Any: ...


def audit_event(
    service: str,
    action: AuditAction | str,
    *,
    outcome: str = "success",
    key_id: str | None = None,
    role: str | None = None,
    client_ip: str | None = None,
    target: str | None = None,
    reason: str = "",
    details: dict[str, Any] | None = None,
) -> AuditEvent:
    return AuditEvent(
        event_id=uuid.uuid4().hex,
        at=datetime.now(UTC),
        service=service,
        action=str(action),
        outcome=outcome,  # type: ignore[arg-type]
        key_id=key_id,
        role=role,
        client_ip=client_ip[:64] if client_ip else None,
        target=target[:1024] if target else None,
        reason=reason[:2048],
        details=details or {},
    )


class AuditLog:
    """Publishes a service's audit events on JetStream (stream ``AUDIT``)."""

    def __init__(
        self,
        js: Publisher,
        ns: Namespace,
        service: str,
        *,
        timeout: float = 5.0,
        max_pending: int = 1000,
        failure_window: float = 60.0,
        max_failure_clients: int = 10_000,
    ) -> None:
        self._js = js
        self._ns = ns
        self._stream = ns.stream(AUDIT)
        self.service = service
        self._timeout = timeout
        self._max_pending = max_pending
        self._pending: set[asyncio.Task[bool]] = set()
        self._dropped = 0
        self._failure_window = failure_window
        self._max_failure_clients = max_failure_clients
        self._failures: dict[tuple[str, str | None], list[Any]] = {}  # → [repeats, first event]
        self._overflow: list[Any] = [0, None]  # refusals beyond max_failure_clients
        self._flush: asyncio.TimerHandle | None = None

    def event(self, action: AuditAction | str, **fields: Any) -> AuditEvent:
        return audit_event(self.service, action, **fields)

    async def record(self, event: AuditEvent) -> bool:
        """Publish ``event`` and wait for JetStream's ack; False (logged, counted) on failure."""
        subject = self._ns.audit_subject(event.service, event.action)
        try:
            await self._js.publish(
                subject,
                event.model_dump_json().encode(),
                timeout=self._timeout,
                stream=self._stream,
                headers={MSG_ID_HEADER: event.event_id},
            )
        except Exception as exc:
            AUDIT_EVENTS.labels(event.action, "failed").inc()
            # The event itself (no secrets in it) goes to the log so it is not lost entirely.
            log.warning(
                "audit_publish_failed",
                error=f"{type(exc).__name__}: {exc}",
                audit=event.model_dump(mode="json"),
            )
            return False
        AUDIT_EVENTS.labels(event.action, "published").inc()
        return True

    def record_soon(self, event: AuditEvent) -> None:
        """Publish ``event`` in the background (bounded; failed authentications aggregated per
        client address: see the module docstring)."""
        if event.action == AuditAction.AUTH_FAILED:
            key = (event.action, event.client_ip)
            entry = self._failures.get(key)
            if entry is None and len(self._failures) >= self._max_failure_clients:
                entry = self._overflow
                entry[1] = entry[1] or event
            if entry is not None:
                entry[0] += 1
                AUDIT_EVENTS.labels(event.action, "aggregated").inc()
                return
            self._failures[key] = [0, event]
            if self._flush is None:
                loop = asyncio.get_running_loop()
                self._flush = loop.call_later(self._failure_window, self.flush_failures)
        self._publish_soon(event)

    def flush_failures(self) -> None:
        """Record the repeats counted in this window (one event per client address) and start
        a new window."""
        self._flush = None
        failures, self._failures = self._failures, {}
        overflow, self._overflow = self._overflow, [0, None]
        window = f"{self._failure_window:g} s"
        for repeats, first in failures.values():
            if repeats:
                self._publish_soon(self._repeated(first, repeats, f"and {repeats} more times"
                                                  f" from this address in {window}"))  # fmt: skip
        if overflow[0]:
            self._publish_soon(
                self._repeated(
                    overflow[1].model_copy(update={"client_ip": None, "key_id": None}),
                    overflow[0],
                    f"{overflow[0]} refusals from more than {self._max_failure_clients} client "
                    f"addresses in {window} (the first: {overflow[1].client_ip})",
                )
            )

    def _repeated(self, first: AuditEvent, repeats: int, summary: str) -> AuditEvent:
        return first.model_copy(
            update={
                "event_id": uuid.uuid4().hex,
                "at": datetime.now(UTC),
                "reason": f"{first.reason} ({summary})"[:2048],
                "details": {**first.details, "repeated": repeats},
            }
        )

    def _publish_soon(self, event: AuditEvent) -> None:
        if len(self._pending) >= self._max_pending:
            self._dropped += 1
            AUDIT_EVENTS.labels(event.action, "dropped").inc()
            if self._dropped % 1000 == 1:
                log.warning("audit_backlog_full", dropped=self._dropped, action=event.action)
            return
        task = asyncio.create_task(self.record(event))
        self._pending.add(task)
        task.add_done_callback(self._pending.discard)

    async def close(self, timeout: float = 5.0) -> None:
        """Record the counted refusals, then wait (bounded) for background publishes."""
        if self._flush is not None:
            self._flush.cancel()
            self.flush_failures()
        if self._pending:
            await asyncio.wait(set(self._pending), timeout=timeout)
