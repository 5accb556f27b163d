"""Role × endpoint × transport: who may do what, decided identically on HTTP, WebSocket connect
and CSV upload (401 for missing/unknown/revoked keys, 403 naming the role or scope, never the
key), against the real gateways on the real local NATS."""

from __future__ import annotations

from typing import Any

import pytest

from tests.security.conftest import SCOPED_DOMAIN, SCOPED_SOURCE, Fleet

pytestmark = pytest.mark.integration

KEYS = ("admin", "writer", "reader", "revoked", "unknown", "missing")
OTHER_SOURCE = "src-b"
OTHER_DOMAIN = "finance"

# (who, domain, source) → expected outcome per transport: HTTP status of /ingest/data,
# WebSocket connect reply (connected / error code), HTTP status of /ingest/csv.
WRITE_TABLE: list[tuple[str, str, str, int, str, int]] = [
    ("admin", SCOPED_DOMAIN, SCOPED_SOURCE, 202, "connected", 202),
    ("admin", OTHER_DOMAIN, OTHER_SOURCE, 202, "connected", 202),
    ("writer", SCOPED_DOMAIN, SCOPED_SOURCE, 202, "connected", 202),
    ("writer", SCOPED_DOMAIN, OTHER_SOURCE, 403, "forbidden", 403),
    ("writer", OTHER_DOMAIN, SCOPED_SOURCE, 403, "forbidden", 403),
    ("reader", SCOPED_DOMAIN, SCOPED_SOURCE, 403, "forbidden", 403),
    ("revoked", SCOPED_DOMAIN, SCOPED_SOURCE, 401, "unauthorized", 401),
    ("unknown", SCOPED_DOMAIN, SCOPED_SOURCE, 401, "unauthorized", 401),
    ("missing", SCOPED_DOMAIN, SCOPED_SOURCE, 401, "unauthorized", 401),
]

# Reason fragments a 403 must contain: the scope or role it was refused by.
SCOPE_WORDS = {
    ("writer", OTHER_SOURCE): "source_ids src-a",
    ("writer", SCOPED_SOURCE): "domains infrastructure",
    ("reader", SCOPED_SOURCE): "read_only",
}

CONFIG = "/streams/infrastructure/src-a/cpu/config"
# (method, path, body) → expected HTTP status per key (the admin endpoints of gateway-http).
ADMIN_TABLE: list[tuple[str, str, Any, dict[str, int]]] = [
    ("GET", CONFIG, None,
     {"admin": 404, "writer": 404, "reader": 404, "revoked": 401, "unknown": 401, "missing": 401}),
    ("PUT", CONFIG, {"unit": "%"},
     {"admin": 200, "writer": 403, "reader": 403, "revoked": 401, "unknown": 401, "missing": 401}),
    ("DELETE", CONFIG, None,
     {"admin": 204, "writer": 403, "reader": 403, "revoked": 401, "unknown": 401, "missing": 401}),
    ("GET", "/keys", None,
     {"admin": 200, "writer": 403, "reader": 403, "revoked": 401, "unknown": 401, "missing": 401}),
    ("POST", "/keys", {"role": "read_only"},
     {"admin": 201, "writer": 403, "reader": 403, "revoked": 401, "unknown": 401, "missing": 401}),
]


def assert_secret_free(reason: str, fleet: Fleet) -> None:
    for key in (fleet.keys.admin, fleet.keys.writer, fleet.keys.reader, fleet.keys.revoked):
        assert key not in reason and key.split("_", 2)[2] not in reason


async def test_write_access_is_the_same_on_http_ws_and_csv(fleet: Fleet) -> None:
    expected, actual = {}, {}
    for who, domain, source, http_status, ws_reply, csv_status in WRITE_TABLE:
        key = fleet.keys.by_name(who)
        http = await fleet.ingest(key, domain, source)
        ws = await fleet.ws_connect(key, domain, source)
        csv = await fleet.upload(key, domain, source)
        case = (who, domain, source)
        expected[case] = (http_status, ws_reply, csv_status)
        actual[case] = (
            http.status_code,
            ws["type"] if ws["type"] == "connected" else ws["code"],
            csv.status_code,
        )
        refusals = [r.json()["error"] for r in (http, csv) if r.status_code >= 400]
        refusals += [ws["reason"]] if ws["type"] == "error" else []
        for reason in refusals:
            assert_secret_free(reason, fleet)
            if http_status == 403:
                word = SCOPE_WORDS[(who, source if who == "writer" else SCOPED_SOURCE)]
                assert word in reason, (case, reason)
        if http_status == 403:  # the same reason on every transport
            assert len(set(refusals)) == 1, refusals
    assert actual == expected


async def test_only_allowed_writes_reach_the_bus(fleet: Fleet) -> None:
    for who, domain, source, *_ in WRITE_TABLE:
        await fleet.ingest(fleet.keys.by_name(who), domain, source)
    stored = sorted((b.domain, b.source_id) for b in await fleet.raw_batches())
    allowed = sorted((d, s) for _, d, s, status, _, _ in WRITE_TABLE if status == 202)
    assert stored == allowed


async def test_admin_endpoints_by_role(fleet: Fleet) -> None:
    expected, actual = {}, {}
    for method, path, body, statuses in ADMIN_TABLE:
        for who in KEYS:
            if method == "DELETE" and who == "admin":  # something to delete
                await fleet.http.put(CONFIG, json={"unit": "%"},
                                     headers={"X-API-Key": fleet.keys.admin})
            key = fleet.keys.by_name(who)
            headers = {"X-API-Key": key} if key else {}
            reply = await fleet.http.request(method, path, json=body, headers=headers)
            expected[(method, path, who)] = statuses[who]
            actual[(method, path, who)] = reply.status_code
            if reply.status_code >= 400:
                assert_secret_free(reply.json()["error"], fleet)
    assert actual == expected


async def test_a_csv_file_with_a_source_column_needs_a_key_for_any_source(fleet: Fleet) -> None:
    csv = b"timestamp,source_id,stream_id,value\n1767225600,src-a,cpu,1\n"
    headers = {"X-API-Key": fleet.keys.writer}
    reply = await fleet.csv.post(
        "/ingest/csv", files={"file": ("d.csv", csv, "text/csv")},
        data={"domain": SCOPED_DOMAIN}, headers=headers,
    )
    assert reply.status_code == 403
    assert "names none; send source_id" in reply.json()["error"]
