from __future__ import annotations

import pytest

from tributary_access.apikeys import ApiKeyStore, Role, hash_key, key_id_of
from tributary_contracts import API_KEYS_BUCKET, Namespace


@pytest.mark.integration
async def test_api_keys_are_stored_hashed_and_looked_up(jetstream: object, bus_prefix: str) -> None:
    kv = await jetstream.key_value(Namespace(bus_prefix).bucket(API_KEYS_BUCKET))  # type: ignore[attr-defined]
    store = ApiKeyStore(kv, cache_seconds=0)
    key = await store.create(Role.ADMIN, name="ops")
    key_id = key_id_of(key)
    assert key_id is not None and key.startswith(f"trb_{key_id}_")
    stored = (await kv.get(key_id)).value
    assert key.encode() not in stored and key.split("_", 2)[2].encode() not in stored
    assert hash_key(key).encode() in stored
    record = await store.lookup(key)
    assert record is not None and record.role == Role.ADMIN and record.name == "ops"
    assert await store.lookup(key + "x") is None
