"""Audit trail end to end: refusals and changes on the gateways → ``audit.<service>.<action>`` on
the real NATS → writer-postgres (its real consume path) → rows in ``ingestion_audit_log`` on the
real PostgreSQL: who (key id, never the key), what, when, from where."""

from __future__ import annotations

import asyncio
import time
from typing import Any

import asyncpg
import pytest

from tests.security.conftest import SCOPED_DOMAIN, SCOPED_SOURCE, Fleet
from tributary_access.apikeys import key_id_of

pytestmark = pytest.mark.integration

ROWS = """
SELECT service, event, outcome, key_id, role, client_ip, target, reason, details::text AS details
FROM ingestion_audit_log ORDER BY time, id
"""


async def audit_rows(dsn: str, expected: int, timeout: float = 30.0) -> list[dict[str, Any]]:
    """The table's rows once it holds ``expected`` of them (bounded wait)."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn = await asyncpg.connect(dsn)
        except (OSError, asyncpg.InvalidCatalogNameError):
            conn = None  # the writer has not created the database yet
        if conn is not None:
            try:
                rows = [dict(r) for r in await conn.fetch(ROWS)]
            except asyncpg.UndefinedTableError:
                rows = []
            finally:
                await conn.close()
            if len(rows) >= expected or time.monotonic() > deadline:
                return rows
        elif time.monotonic() > deadline:
            return []
        await asyncio.sleep(0.2)


async def test_refusals_and_changes_become_audit_rows(
    fleet: Fleet, run_writer: Any, database_dsn: str
) -> None:
    keys = fleet.keys
    admin_id = key_id_of(keys.admin)
    async with run_writer():
        async with fleet.http_from("192.0.2.7") as remote:
            await fleet.ingest(keys.unknown, client=remote)  # 401
        await fleet.ws_connect(keys.reader)  # 403 on WebSocket connect
        await fleet.upload(keys.revoked)  # 401 on CSV upload
        headers = {"X-API-Key": keys.admin}
        created = (await fleet.http.post("/keys", json={"role": "read_only", "name": "ci"},
                                         headers=headers)).json()
        rotated = (await fleet.http.post(f"/keys/{created['key_id']}/rotate",
                                         json={"overlap_seconds": 60}, headers=headers)).json()
        await fleet.http.delete(f"/keys/{rotated['key_id']}", headers=headers)
        await fleet.http.put(f"/streams/{SCOPED_DOMAIN}/{SCOPED_SOURCE}/cpu/config",
                             json={"unit": "%"}, headers=headers)

        rows = await audit_rows(database_dsn, 7)

    summary = [(r["service"], r["event"], r["outcome"], r["key_id"], r["client_ip"])
               for r in rows]
    assert sorted(summary, key=str) == sorted([
        ("gateway-http", "auth_failed", "failure", "0123456789ab", "192.0.2.7"),
        ("gateway-ws", "access_denied", "failure", key_id_of(keys.reader), "127.0.0.1"),
        ("csv-importer", "auth_failed", "failure", key_id_of(keys.revoked), "127.0.0.1"),
        ("gateway-http", "key_created", "success", admin_id, "127.0.0.1"),
        ("gateway-http", "key_rotated", "success", admin_id, "127.0.0.1"),
        ("gateway-http", "key_revoked", "success", admin_id, "127.0.0.1"),
        ("gateway-http", "config_changed", "success", admin_id, "127.0.0.1"),
    ], key=str)
    by_event = {r["event"]: r for r in rows}
    assert by_event["key_rotated"]["target"] == created["key_id"]
    assert rotated["key_id"] in by_event["key_rotated"]["details"]
    assert by_event["config_changed"]["target"] == f"{SCOPED_DOMAIN}/{SCOPED_SOURCE}/cpu"
    targets = sorted(r["target"] for r in rows if r["event"] == "auth_failed")
    assert targets == ["POST /ingest/csv", "POST /ingest/data"]
    everything = repr(rows)
    for key in (keys.admin, keys.reader, keys.revoked, created["key"], rotated["key"]):
        assert key.split("_", 2)[2] not in everything  # never a secret in the audit log
