"""Key administration with its audit trail: what ``tributary keys …`` and gateway-http's
``/keys`` endpoints both do. Each change is made in the ``api-keys`` bucket, then recorded as an
``AuditEvent`` (``key_created``, ``key_revoked``, ``key_rotated``, ``key_imported``) naming key
ids, never keys. Legacy key records (seed 002's ``api_keys`` table: SHA-256, role, scopes,
enabled) are read from an export by ``read_legacy_keys``/``parse_legacy_key``.
"""

from __future__ import annotations

import csv
import io
import json
import re
from dataclasses import dataclass
from typing import Any

from tributary_access.apikeys import (
    ApiKeyRecord,
    ApiKeyStore,
    IssuedKey,
    KeyProblem,
    Role,
)
from tributary_access.audit import AuditLog
from tributary_contracts import AuditAction

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


# -- legacy key import (tributary keys import) -------------------------------------------------
LEGACY_ROLES = {
    "admin": Role.ADMIN,
    "source_writer": Role.SOURCE_WRITER,
    "read_only": Role.READ_ONLY,
    "readonly": Role.READ_ONLY,
    "ingest": Role.SOURCE_WRITER,
}
"""Role names of the legacy ``api_keys`` table (``ADMIN``, ``SOURCE_WRITER``, ``READ_ONLY``; any
case) → roles here."""
LEGACY_COLUMNS = {
    "hash": ("key_hash", "api_key_hash", "secret_sha256", "key_sha256", "sha256", "hash"),
    "role": ("role",),
    "name": ("name", "client_name", "description", "owner"),
    "source_ids": ("source_ids", "allowed_source_ids", "allowed_sources", "source_id"),
    "domains": ("domains", "allowed_domains", "domain"),
    "enabled": ("enabled", "is_active", "active"),
    "legacy_id": ("id", "key_id", "api_key_id"),
}
"""Field → the column names a legacy export may give it (first present wins)."""
_TRUE = {"1", "true", "t", "yes", "y", "on"}
_FALSE = {"0", "false", "f", "no", "n", "off"}


@dataclass(frozen=True)
class LegacyKey:
    """One legacy key record, checked: what ``ApiKeyStore.import_legacy`` stores."""

    secret_sha256: str
    role: Role
    name: str
    source_ids: list[str] | None
    domains: list[str] | None
    enabled: bool


def _column(row: dict[str, Any], field: str) -> Any:
    lowered = {str(k).strip().lower(): v for k, v in row.items()}
    for name in LEGACY_COLUMNS[field]:
        if name in lowered and lowered[name] not in (None, ""):
            return lowered[name]
    return None


def _scope_list(value: Any) -> list[str] | None:
    if value is None:
        return None
    if isinstance(value, list):
        return [str(v) for v in value]
    text = str(value).strip()
    if text.startswith("["):
        loaded = json.loads(text)
        if not isinstance(loaded, list):
            raise ValueError(f"{text[:40]!r} is not a list")
        return [str(v) for v in loaded]
    return [part for part in re.split(r"[,;|\s]+", text) if part]


def parse_legacy_key(row: dict[str, Any]) -> LegacyKey:
    """One row of a legacy export (CSV row or JSON object) → ``LegacyKey``; ``ValueError``
    naming the column at fault."""
    digest = _column(row, "hash")
    if digest is None:
        raise ValueError(f"no key hash column (one of {', '.join(LEGACY_COLUMNS['hash'])})")
    digest = str(digest).strip().lower()
    if not re.fullmatch(r"[0-9a-f]{64}", digest):
        raise ValueError("key hash must be 64 hex digits (the SHA-256 of the key text)")
    raw_role = _column(row, "role")
    role = LEGACY_ROLES.get(str(raw_role).strip().lower()) if raw_role is not None else None
    if role is None:
        raise ValueError(
            f"role {str(raw_role)[:32]!r} is not one of ADMIN, SOURCE_WRITER, READ_ONLY"
        )
    enabled_raw = _column(row, "enabled")
    enabled = True
    if enabled_raw is not None:
        text = str(enabled_raw).strip().lower()
        if text not in _TRUE | _FALSE:
            raise ValueError(f"enabled {text[:16]!r} is not a boolean (1/0, true/false)")
        enabled = text in _TRUE
    try:
        sources = _scope_list(_column(row, "source_ids"))
        domains = _scope_list(_column(row, "domains"))
    except ValueError as exc:
        raise ValueError(f"scope: {exc}") from None
    if role is Role.SOURCE_WRITER and not sources:
        raise ValueError("a SOURCE_WRITER key needs its source id(s) (column source_ids)")
    name = str(_column(row, "name") or "")
    legacy_id = _column(row, "legacy_id")
    if legacy_id is not None:
        name = f"{name} (legacy id {legacy_id})".strip()
    return LegacyKey(digest, role, name[:256], sources, domains, enabled)


def read_legacy_keys(text: str) -> list[dict[str, Any]]:
    """The rows of a legacy key export: a JSON list of objects, JSON lines, or CSV with a
    header row (the ``api_keys`` table exported as is)."""
    stripped = text.lstrip()
    if stripped.startswith("["):
        rows = json.loads(stripped)
        if not isinstance(rows, list) or not all(isinstance(r, dict) for r in rows):
            raise ValueError("a JSON export must be a list of objects")
        return rows
    if stripped.startswith("{"):
        return [json.loads(line) for line in stripped.splitlines() if line.strip()]
    return list(csv.DictReader(io.StringIO(stripped)))


async def import_legacy_key(
    store: ApiKeyStore, audit: AuditLog, actor: Actor, key: LegacyKey
) -> tuple[ApiKeyRecord, bool]:
    """Store one legacy key (``(record, created)``); a new one is audited ``key_imported``."""
    record, created = await store.import_legacy(
        key.secret_sha256,
        key.role,
        key.name,
        source_ids=key.source_ids,
        domains=key.domains if key.role is Role.SOURCE_WRITER and key.domains else None,
        enabled=key.enabled,
    )
    if created:
        await audit.record(
            audit.event(
                AuditAction.KEY_IMPORTED,
                key_id=actor.key_id,
                role=actor.role,
                client_ip=actor.client_ip,
                target=record.key_id,
                reason=f"imported legacy {record.role.value} key {record.key_id}"
                + ("" if key.enabled else " (disabled there: stored revoked)"),
                details=_details(record, actor, origin="legacy"),
            )
        )
    return record, created
