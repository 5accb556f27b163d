"""Key administration with its audit trail: what ``tributary keys …`` and gateway-http's
``/keys`` endpoints both do. Each change is made in the ``api-keys`` bucket, then recorded as an
``AuditEvent`` (``key_created``, ``key_revoked``, ``key_rotated``) naming key ids, never keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from tributary_contracts import AuditAction
from tributary_runtime.apikeys import (
    ApiKeyRecord,
    ApiKeyStore,
    IssuedKey,
    KeyProblem,
    Role,
)
from tributary_runtime.audit import AuditLog

DEFAULT_OVERLAP_SECONDS = 24 * 3600.0
CREATE_FIELDS = frozenset({"role", "name", "source_ids", "domains"})


@dataclass(frozen=True)
class Actor:
    """Who asks: the admin key's id and address (HTTP), or the operator (CLI)."""

    key_id: str | None = None
    role: str | None = None
    client_ip: str | None = None
    operator: str | None = None


def _details(record: ApiKeyRecord, actor: Actor, **extra: Any) -> dict[str, Any]:
    details: dict[str, Any] = {
        "role": record.role.value,
        "name": record.name,
        "source_ids": record.source_ids,
        "domains": record.domains,
    }
    if actor.operator:
        details["operator"] = actor.operator
    return details | extra


async def create_key(
    store: ApiKeyStore,
    audit: AuditLog,
    actor: Actor,
    role: Role,
    name: str = "",
    source_ids: list[str] | None = None,
    domains: list[str] | None = None,
) -> IssuedKey:
    issued = await store.issue(role, name, source_ids=source_ids, domains=domains)
    await audit.record(
        audit.event(
            AuditAction.KEY_CREATED,
            key_id=actor.key_id,
            role=actor.role,
            client_ip=actor.client_ip,
            target=issued.record.key_id,
            reason=f"created {role.value} key {issued.record.key_id}",
            details=_details(issued.record, actor),
        )
    )
    return issued


async def revoke_key(
    store: ApiKeyStore, audit: AuditLog, actor: Actor, key_id: str
) -> ApiKeyRecord:
    record = await store.revoke(key_id)
    await audit.record(
        audit.event(
            AuditAction.KEY_REVOKED,
            key_id=actor.key_id,
            role=actor.role,
            client_ip=actor.client_ip,
            target=key_id,
            reason=f"revoked key {key_id}",
            details=_details(record, actor),
        )
    )
    return record


async def rotate_key(
    store: ApiKeyStore, audit: AuditLog, actor: Actor, key_id: str, overlap_seconds: float
) -> tuple[IssuedKey, ApiKeyRecord]:
    issued, old = await store.rotate(key_id, overlap_seconds)
    await audit.record(
        audit.event(
            AuditAction.KEY_ROTATED,
            key_id=actor.key_id,
            role=actor.role,
            client_ip=actor.client_ip,
            target=key_id,
            reason=f"rotated key {key_id} to {issued.record.key_id}; the old key is valid "
            f"until {old.expires_at.isoformat() if old.expires_at else 'now'}",
            details=_details(
                old, actor, new_key_id=issued.record.key_id, overlap_seconds=overlap_seconds
            ),
        )
    )
    return issued, old


def parse_create(body: Any) -> tuple[Role, str, list[str] | None, list[str] | None]:
    """A ``POST /keys`` body → (role, name, source_ids, domains), or ``KeyProblem`` (422)."""
    if not isinstance(body, dict):
        raise KeyProblem(
            422, "body must be a JSON object with role (and name, source_ids, domains)"
        )
    unknown = sorted(str(k) for k in body if k not in CREATE_FIELDS)
    if unknown:
        raise KeyProblem(
            422, f"unknown field(s) {', '.join(unknown)}; expected role, name, source_ids, domains"
        )
    roles = ", ".join(r.value for r in Role)
    try:
        role = Role(str(body.get("role")))
    except ValueError:
        raise KeyProblem(422, f"role must be one of {roles}") from None
    name = body.get("name", "")
    if not isinstance(name, str):
        raise KeyProblem(422, "name must be a string")
    lists: list[list[str] | None] = []
    for field in ("source_ids", "domains"):
        value = body.get(field)
        if value is not None and (
            not isinstance(value, list) or not all(isinstance(v, str) for v in value)
        ):
            raise KeyProblem(422, f"{field} must be an array of strings (\"*\" = any)")
        if role is not Role.SOURCE_WRITER and value is not None:
            raise KeyProblem(422, f"{field} applies to role source_writer only")
        lists.append(value)
    if role is Role.SOURCE_WRITER and (lists[0] is None or lists[1] is None):
        raise KeyProblem(
            422, 'a source_writer key needs source_ids and domains (["*"] for any)'
        )
    return role, name, lists[0], lists[1]
