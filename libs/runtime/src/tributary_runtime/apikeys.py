"""API keys: stored as SHA-256 hashes in the ``api-keys`` bucket, never in clear.

A key is shown once, when created; the bucket maps ``sha256(key)`` to the key's role and name.
Gateways look keys up through ``ApiKeyStore``, which caches answers for a few seconds so a hot
ingest path does not pay a KV round trip per request.
"""

from __future__ import annotations

import hashlib
import secrets
import time
from datetime import UTC, datetime
from enum import StrEnum

from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue
from pydantic import BaseModel, Field

KEY_PREFIX = "trb_"


class Role(StrEnum):
    """What a key may do. ``admin`` may do everything; ``ingest`` may only send points."""

    ADMIN = "admin"
    INGEST = "ingest"


class ApiKeyRecord(BaseModel):
    """What the bucket stores under a key's hash."""

    role: Role = Field(description="Role of the key.")
    name: str = Field(default="", description="Who or what the key is for.")
    created_at: datetime = Field(description="When the key was created (UTC).")


def hash_key(key: str) -> str:
    """Bucket key of an API key: hex SHA-256 of its text."""
    return hashlib.sha256(key.encode()).hexdigest()


class ApiKeyStore:
    """Create and look up API keys in the ``api-keys`` bucket."""

    def __init__(self, kv: KeyValue, cache_seconds: float = 5.0) -> None:
        self._kv = kv
        self._cache_seconds = cache_seconds
        self._cache: dict[str, tuple[float, ApiKeyRecord | None]] = {}

    async def create(self, role: Role, name: str = "") -> str:
        """Store a new key and return it in clear (the only time it is seen)."""
        key = KEY_PREFIX + secrets.token_urlsafe(32)
        record = ApiKeyRecord(role=role, name=name, created_at=datetime.now(UTC))
        await self._kv.put(hash_key(key), record.model_dump_json().encode())
        return key

    async def lookup(self, key: str) -> ApiKeyRecord | None:
        """The record of ``key``, or None when it is unknown."""
        digest = hash_key(key)
        now = time.monotonic()
        cached = self._cache.get(digest)
        if cached is not None and now - cached[0] < self._cache_seconds:
            return cached[1]
        try:
            entry = await self._kv.get(digest)
            record = ApiKeyRecord.model_validate_json(entry.value) if entry.value else None
        except KeyNotFoundError:
            record = None
        if len(self._cache) > 10_000:  # bounded: unknown keys must not grow memory forever
            self._cache.clear()
        self._cache[digest] = (now, record)
        return record
