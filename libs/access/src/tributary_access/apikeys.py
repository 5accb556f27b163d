"""API keys: ``trb_<id>_<secret>``, stored only as a SHA-256 hash under their id.

The ``api-keys`` bucket maps a key's public *id* (12 hex digits, the part between the first two
underscores) to an ``ApiKeyRecord`` holding the SHA-256 of the whole key, never the key. A lookup
is one bucket read by id (O(1)); the presented key's hash is compared with
``hmac.compare_digest`` (constant time). The id is not a secret: it names the key in listings,
audit rows and admin commands; the secret is shown once, when the key is created or rotated.

Roles (seed 002, ISO 27001 A.9.2.3):

- ``admin``: everything (write points anywhere, stream configs, keys);
- ``source_writer``: write points only to its listed ``source_ids`` and ``domains`` (``*`` in a
  list means any), read;
- ``read_only``: read only, never write.

``authenticate(key)`` then ``check_access(record, action, domain, source_id)`` is the one
decision every transport (HTTP, WebSocket connect, CSV upload) makes through
``tributary_access.access.Access``, so they answer identically: 401 for a missing, malformed,
unknown, revoked or expired key, 403 for a known key outside its role or scope, with a reason
that names the role/scope and never the key.

Revocation and rotation reach a gateway within its cache time (``API_KEY_CACHE_SECONDS``).
Keys of the format before ids (``trb_<secret>`` stored under its hash) are no longer accepted:
create new ones (``make run`` replaces its admin key by itself).

Keys of the legacy IoT system (seed 002: its ``api_keys`` table held SHA-256 hashes with a role)
are brought over by ``import_legacy`` (``tributary keys import``): each gets a record like any
key (own id, ``origin`` ``legacy``; listed, revocable, rotatable, audited) plus an index entry
``sha256.<hex>`` → id, so the old key text — which carries no id — is found by its hash. A
presented key that is not ``trb_<id>_<secret>`` is looked up there (one cached bucket read).
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from enum import StrEnum

from nats.js.errors import KeyNotFoundError, KeyWrongLastSequenceError
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field, ValidationError

from tributary_contracts.subjects import WILDCARD
from tributary_runtime.kvwatch import kv_keys

KEY_PREFIX = "trb_"
ANY = WILDCARD
"""A scope entry that matches every source or domain."""
KEY_ID_RE = re.compile(r"^[0-9a-f]{12}$")
_KEY_RE = re.compile(r"^trb_([0-9a-f]{12})_([A-Za-z0-9_-]{20,128})$")
MAX_KEY_CHARS = 160
"""Longer header values are refused before any hashing (bounded work per request)."""


class Role(StrEnum):
    """What a key may do (see the module docstring)."""

    ADMIN = "admin"
    SOURCE_WRITER = "source_writer"
    READ_ONLY = "read_only"


class Action(StrEnum):
    """What a request wants to do; the words appear in 403 reasons."""

    WRITE_POINTS = "write points"
    READ = "read"
    MANAGE_CONFIGS = "change stream configs"
    MANAGE_KEYS = "manage API keys"


class ApiKeyRecord(BaseModel):
    """What the bucket stores under a key's id (never the key)."""

    key_id: str = Field(description="Public id of the key (12 hex digits).")
    secret_sha256: str = Field(description="Hex SHA-256 of the whole key text.")
    role: Role = Field(description="Role of the key.")
    name: str = Field(default="", description="Who or what the key is for.")
    source_ids: list[str] = Field(
        default_factory=lambda: [ANY], description="source_writer: writable source ids (* = any)."
    )
    domains: list[str] = Field(
        default_factory=lambda: [ANY], description="source_writer: writable domains (* = any)."
    )
    created_at: datetime = Field(description="When the key was created (UTC).")
    expires_at: datetime | None = Field(
        default=None, description="End of a rotation's overlap: refused from then on."
    )
    revoked_at: datetime | None = Field(default=None, description="When it was revoked.")
    rotated_from: str | None = Field(default=None, description="Id of the key it replaced.")
    rotated_to: str | None = Field(default=None, description="Id of the key that replaces it.")
    origin: str = Field(
        default="tributary",
        description="'tributary' (made here, trb_<id>_<secret>) or 'legacy' (imported from the "
        "legacy system by its SHA-256; presented as the old key text).",
    )

    def status(self, now: datetime | None = None) -> str:
        """``active``, ``revoked``, ``expired`` or ``rotating`` (valid until ``expires_at``)."""
        now = now or datetime.now(UTC)
        if self.revoked_at is not None:
            return "revoked"
        if self.expires_at is not None:
            return "expired" if now >= self.expires_at else "rotating"
        return "active"

    def public(self) -> dict[str, object]:
        """The record as listings show it: everything but the hash."""
        shown = self.model_dump(mode="json", exclude={"secret_sha256"})
        shown["status"] = self.status()
        return shown

    def scope_text(self) -> str:
        return f"source_ids {', '.join(self.source_ids) or '(none)'}; domains " + (
            ", ".join(self.domains) or "(none)"
        )


@dataclass(frozen=True)
class IssuedKey:
    """A key as created: its text (shown once) and its stored record."""

    key: str
    record: ApiKeyRecord


@dataclass(frozen=True)
class Granted:
    record: ApiKeyRecord

    @property
    def key_id(self) -> str:
        return self.record.key_id


@dataclass(frozen=True)
class Denied:
    """401 (who are you?) or 403 (not allowed); ``reason`` never contains the key."""

    status: int
    reason: str
    key_id: str | None = None
    role: str | None = None


class KeyProblem(ValueError):
    """An admin operation that cannot be done (unknown id, already revoked…)."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


LEGACY_INDEX_PREFIX = "sha256."
SHA256_RE = re.compile(r"^[0-9a-f]{64}$")


def legacy_index_key(secret_sha256: str) -> str:
    """Bucket key of the hash → id index entry of an imported legacy key."""
    return LEGACY_INDEX_PREFIX + secret_sha256


def hash_key(key: str) -> str:
    """Hex SHA-256 of a key's text."""
    return hashlib.sha256(key.encode()).hexdigest()


def key_id_of(key: str) -> str | None:
    """The id part of a well-formed key, else None (not secret: fine for audit and logs)."""
    if len(key) > MAX_KEY_CHARS:
        return None
    match = _KEY_RE.match(key)
    return match[1] if match else None


def _in_scope(value: str, allowed: Sequence[str]) -> bool:
    return ANY in allowed or value in allowed


def check_access(
    record: ApiKeyRecord,
    action: Action,
    domain: str | None = None,
    source_id: str | None = None,
) -> str | None:
    """Why ``record`` may not do ``action`` (on ``domain``/``source_id``), or None if it may."""
    role = record.role
    if role is Role.ADMIN:
        return None
    if action is Action.READ:
        return None
    if role is Role.READ_ONLY:
        return f"API key role 'read_only' may not {action} (read-only keys never write)"
    if action is not Action.WRITE_POINTS:
        return f"API key role {role.value!r} may not {action} (needs role admin)"
    if domain is not None and not _in_scope(domain, record.domains):
        return (
            f"API key role 'source_writer' may not write to domain {domain[:64]!r} "
            f"(its scope: {record.scope_text()})"
        )
    if source_id is None:
        if ANY not in record.source_ids:
            return (
                "API key role 'source_writer' is limited to listed source_ids and this request "
                f"names none; send source_id (its scope: {record.scope_text()})"
            )
    elif not _in_scope(source_id, record.source_ids):
        return (
            f"API key role 'source_writer' may not write to source_id {source_id[:64]!r} "
            f"(its scope: {record.scope_text()})"
        )
    return None


def _clean_scope(values: Iterable[str] | None, what: str) -> list[str]:
    if values is None:
        return [ANY]
    cleaned = sorted({v.strip() for v in values if v.strip()})
    if not cleaned:
        raise KeyProblem(422, f"{what} must list at least one value ({ANY} for any)")
    for value in cleaned:
        if len(value) > 256 or not value.isprintable():
            raise KeyProblem(422, f"{what} entries must be 1–256 printable characters")
    return cleaned


class ApiKeyStore:
    """Create, look up, list, revoke and rotate keys in the ``api-keys`` bucket."""

    def __init__(self, kv: KeyValue, cache_seconds: float = 5.0) -> None:
        self._kv = kv
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, ApiKeyRecord | None]] = {}
        self._index_cache: dict[str, tuple[float, str | None]] = {}
        # key text → (when its record was read, the grant): a request with a key granted within
        # the cache time skips the id parse, the bucket cache and the hash (same answers).
        self._granted: dict[str, tuple[float, Granted]] = {}

    # -- admin --------------------------------------------------------------------------
    async def issue(
        self,
        role: Role,
        name: str = "",
        *,
        source_ids: Iterable[str] | None = None,
        domains: Iterable[str] | None = None,
        rotated_from: str | None = None,
    ) -> IssuedKey:
        """Store a new key; its text is in the result and nowhere else.

        ``source_ids``/``domains`` scope a ``source_writer`` (None = any);
        other roles ignore them."""
        if len(name) > 256:
            raise KeyProblem(422, "name must be at most 256 characters")
        if role is Role.SOURCE_WRITER:
            sources, domain_list = _clean_scope(source_ids, "source_ids"), _clean_scope(
                domains, "domains"
            )
        else:
            sources, domain_list = [ANY], [ANY]
        key_id = secrets.token_hex(6)
        key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
        record = ApiKeyRecord(
            key_id=key_id,
            secret_sha256=hash_key(key),
            role=role,
            name=name,
            source_ids=sources,
            domains=domain_list,
            created_at=datetime.now(UTC),
            rotated_from=rotated_from,
        )
        await self._kv.create(key_id, record.model_dump_json().encode())
        return IssuedKey(key, record)

    async def create(
        self,
        role: Role,
        name: str = "",
        *,
        source_ids: Iterable[str] | None = None,
        domains: Iterable[str] | None = None,
    ) -> str:
        """``issue`` returning only the key text."""
        issued = await self.issue(role, name, source_ids=source_ids, domains=domains)
        return issued.key

    async def get(self, key_id: str) -> ApiKeyRecord | None:
        """The stored record of ``key_id`` (uncached), or None."""
        if not KEY_ID_RE.match(key_id):
            return None
        try:
            entry = await self._kv.get(key_id)
        except KeyNotFoundError:
            return None
        return ApiKeyRecord.model_validate_json(entry.value) if entry.value else None

    async def list(self) -> list[ApiKeyRecord]:
        """Every key record, oldest first (unreadable entries are skipped)."""
        names = await kv_keys(self._kv)
        records = []
        for name in names:
            if not KEY_ID_RE.match(name):
                continue  # an entry of the format before ids: never accepted any more
            try:
                record = await self.get(name)
            except ValidationError:
                continue
            if record is not None:
                records.append(record)
        records.sort(key=lambda r: r.created_at)
        return records

    async def _change(self, key_id: str) -> tuple[ApiKeyRecord, int]:
        if not KEY_ID_RE.match(key_id):
            raise KeyProblem(404, f"no API key with id {key_id[:32]!r} (ids are 12 hex digits)")
        try:
            entry = await self._kv.get(key_id)
        except KeyNotFoundError:
            raise KeyProblem(404, f"no API key with id {key_id!r}") from None
        if not entry.value:
            raise KeyProblem(404, f"no API key with id {key_id!r}")
        return ApiKeyRecord.model_validate_json(entry.value), entry.revision or 0

    async def revoke(self, key_id: str) -> ApiKeyRecord:
        """Refuse the key from now on (kept in the bucket for listings and audit)."""
        record, revision = await self._change(key_id)
        if record.revoked_at is not None:
            raise KeyProblem(409, f"API key {key_id} is already revoked")
        record.revoked_at = datetime.now(UTC)
        await self._kv.update(key_id, record.model_dump_json().encode(), last=revision)
        self._cache.pop(key_id, None)
        self._granted.clear()
        return record

    async def rotate(self, key_id: str, overlap_seconds: float) -> tuple[IssuedKey, ApiKeyRecord]:
        """A new key with the same role, name and scope; the old one stays valid for
        ``overlap_seconds`` more (0: refused at once), so producers can switch without a gap."""
        if overlap_seconds < 0:
            raise KeyProblem(422, "overlap_seconds must be 0 or more")
        record, revision = await self._change(key_id)
        status = record.status()
        if status in ("revoked", "expired"):
            raise KeyProblem(409, f"API key {key_id} is {status}; create a new key instead")
        if record.rotated_to is not None:
            raise KeyProblem(409, f"API key {key_id} was already rotated to {record.rotated_to}")
        issued = await self.issue(
            record.role,
            record.name,
            source_ids=record.source_ids,
            domains=record.domains,
            rotated_from=key_id,
        )
        record.rotated_to = issued.record.key_id
        record.expires_at = datetime.now(UTC) + timedelta(seconds=overlap_seconds)
        await self._kv.update(key_id, record.model_dump_json().encode(), last=revision)
        self._cache.pop(key_id, None)
        self._granted.clear()
        return issued, record

    # -- gateways ------------------------------------------------------------------------
    async def import_legacy(
        self,
        secret_sha256: str,
        role: Role,
        name: str = "",
        *,
        source_ids: Iterable[str] | None = None,
        domains: Iterable[str] | None = None,
        enabled: bool = True,
    ) -> tuple[ApiKeyRecord, bool]:
        """Store a legacy key by its SHA-256 (hex): ``(record, True)`` when made now,
        ``(existing record, False)`` when that hash was imported before (re-running an import
        changes nothing). A disabled legacy key is imported revoked (listed, never accepted)."""
        digest = secret_sha256.strip().lower()
        if not SHA256_RE.match(digest):
            raise KeyProblem(422, "the key hash must be 64 hex digits (SHA-256 of the key text)")
        if len(name) > 256:
            raise KeyProblem(422, "name must be at most 256 characters")
        if role is Role.SOURCE_WRITER:
            sources, domain_list = (
                _clean_scope(source_ids, "source_ids"),
                _clean_scope(domains, "domains"),
            )
        else:
            sources, domain_list = [ANY], [ANY]
        index = legacy_index_key(digest)
        key_id = secrets.token_hex(6)
        try:
            await self._kv.create(index, key_id.encode())
        except KeyWrongLastSequenceError:
            entry = await self._kv.get(index)
            key_id = entry.value.decode() if entry.value else key_id
            existing = await self.get(key_id)
            if existing is not None:
                return existing, False
            # the index was written by an import that stopped before its record: finish it
        now = datetime.now(UTC)
        record = ApiKeyRecord(
            key_id=key_id,
            secret_sha256=digest,
            role=role,
            name=name,
            source_ids=sources,
            domains=domain_list,
            created_at=now,
            revoked_at=None if enabled else now,
            origin="legacy",
        )
        await self._kv.put(key_id, record.model_dump_json().encode())
        self._index_cache.pop(digest, None)
        return record, True

    async def _legacy_id(self, digest: str) -> str | None:
        """The id the ``sha256.<digest>`` index names (cached like records), or None."""
        now = time.monotonic()
        cached = self._index_cache.get(digest)
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        try:
            entry = await self._kv.get(legacy_index_key(digest))
            key_id = entry.value.decode() if entry.value else None
        except KeyNotFoundError:
            key_id = None
        if len(self._index_cache) > 10_000:
            self._index_cache.clear()
        self._index_cache[digest] = (now, key_id)
        return key_id

    async def _cached(self, key_id: str) -> ApiKeyRecord | None:
        now = time.monotonic()
        cached = self._cache.get(key_id)
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        record = await self.get(key_id)
        if len(self._cache) > 10_000:  # bounded: unknown ids must not grow memory forever
            self._cache.clear()
        self._cache[key_id] = (now, record)
        return record

    async def lookup(self, key: str) -> ApiKeyRecord | None:
        """The record of a valid (known, not revoked, not expired) ``key``, else None.
        ``ValidationError`` when the stored record is unreadable (e.g. an unknown role)."""
        result = await self.authenticate(key)
        return result.record if isinstance(result, Granted) else None

    async def authenticate(self, key: str | None) -> Granted | Denied:
        """Who presents ``key``: ``Granted`` or ``Denied(401/403)``; store errors propagate."""
        if not key:
            return Denied(401, "missing API key")
        hit = self._granted.get(key)
        if hit is not None and time.monotonic() - hit[0] < self._cache_seconds:
            expires_at = hit[1].record.expires_at
            if expires_at is None or datetime.now(UTC) < expires_at:
                return hit[1]
        key_id = key_id_of(key)
        if key_id is None and len(key) <= MAX_KEY_CHARS:
            key_id = await self._legacy_id(hash_key(key))  # an imported legacy key?
        if key_id is None:
            return Denied(401, "malformed API key (expected trb_<id>_<secret>)")
        try:
            record = await self._cached(key_id)
        except ValidationError as exc:
            roles = [e["input"] for e in exc.errors() if e["loc"] == ("role",)]
            role = str(roles[0])[:32] if roles else "unknown"
            return Denied(403, f"API key role {role!r} is not one this service knows", key_id)
        if record is None or not hmac.compare_digest(
            record.secret_sha256.encode(), hash_key(key).encode()
        ):
            return Denied(401, "unknown API key", key_id)
        status = record.status()
        if status == "revoked":
            return Denied(401, "API key has been revoked", key_id, record.role.value)
        if status == "expired":
            return Denied(
                401, "API key has expired (it was rotated; use its successor)", key_id,
                record.role.value,
            )
        granted = Granted(record)
        cached = self._cache.get(key_id)
        if cached is not None and cached[1] is record:
            if len(self._granted) > 10_000:
                self._granted.clear()
            self._granted[key] = (cached[0], granted)
        return granted
