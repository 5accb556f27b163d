"""Admin endpoints for API keys (admin keys only; every change audited):

- ``POST /keys`` ``{"role", "name", "source_ids", "domains"}`` → 201 with the key, shown once;
- ``GET /keys`` → every key's record, never a secret or hash;
- ``GET /keys/{key_id}`` → one record;
- ``DELETE /keys/{key_id}`` → revoke (refused from now on, kept for the record);
- ``POST /keys/{key_id}/rotate`` ``{"overlap_seconds": n}`` → 201 with the successor key; the old
  one stays valid for ``n`` seconds (default ``KEY_ROTATION_OVERLAP_SECONDS``).
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request

from gateway_http.context import HttpContext
from tributary_access.apikeys import Action, ApiKeyStore, IssuedKey, KeyProblem
from tributary_access.audit import AuditLog
from tributary_access.guard import client_ip
from tributary_access.key_admin import Actor, create_key, parse_create, revoke_key, rotate_key
from tributary_ingest import http
from tributary_ingest.http import Answer
from tributary_ingest.points import MalformedJson, parse_json
from tributary_runtime.ops import Reply

NO_STORE = {"Cache-Control": "no-store"}


def issued_body(issued: IssuedKey) -> dict[str, Any]:
    return {"key": issued.key, **issued.record.public()}


def _json(body: bytes, default: Any) -> Any:
    if not body:
        return default
    try:
        return parse_json(body)
    except MalformedJson as exc:
        raise Reply(400, {"error": str(exc)}) from None


async def handle(
    method: str,
    key_id: str | None,
    rotate: bool,
    body: bytes,
    store: ApiKeyStore,
    audit: AuditLog,
    actor: Actor,
    default_overlap: float,
) -> tuple[int, dict[str, Any]]:
    """One request of the keys API → (status, JSON body); ``KeyProblem`` → its status."""
    try:
        if key_id is None:
            if method == "GET":
                return 200, {"keys": [r.public() for r in await store.list()]}
            if method == "POST":
                role, name, sources, domains = parse_create(_json(body, None))
                issued = await create_key(store, audit, actor, role, name, sources, domains)
                return 201, issued_body(issued)
        elif rotate:
            if method == "POST":
                options = _json(body, {})
                if not isinstance(options, dict) or set(options) - {"overlap_seconds"}:
                    raise KeyProblem(422, "body must be {\"overlap_seconds\": n} or empty")
                overlap = options.get("overlap_seconds", default_overlap)
                if isinstance(overlap, bool) or not isinstance(overlap, int | float):
                    raise KeyProblem(422, "overlap_seconds must be a number of seconds")
                if not 0 <= overlap <= 365 * 24 * 3600:
                    raise KeyProblem(422, "overlap_seconds must be between 0 and one year")
                issued, old = await rotate_key(store, audit, actor, key_id, float(overlap))
                return 201, issued_body(issued) | {"previous": old.public()}
        else:
            if method == "GET":
                record = await store.get(key_id)
                if record is None:
                    raise KeyProblem(404, f"no API key with id {key_id[:32]!r}")
                return 200, record.public()
            if method == "DELETE":
                return 200, (await revoke_key(store, audit, actor, key_id)).public()
        return 405, {"error": f"method {method} not allowed here"}
    except KeyProblem as exc:
        return exc.status, {"error": exc.message}


async def keys(ctx: HttpContext, request: Request) -> Answer:
    """GET|POST /keys, GET|DELETE /keys/{id}, POST /keys/{id}/rotate (admin keys only)."""
    gateway = ctx.gateway
    granted = await http.authenticate(gateway, request)
    http.check(gateway, request, granted, Action.MANAGE_KEYS)
    parts = request.url.path.strip("/").split("/")
    if len(parts) > 3 or (len(parts) == 3 and parts[2] != "rotate"):
        raise Reply(404, {"error": "not found; see /keys, /keys/{id}, /keys/{id}/rotate"})
    key_id = parts[1] if len(parts) > 1 else None
    body = await ctx.read_body(request) if request.method == "POST" else b""
    actor = Actor(granted.key_id, granted.record.role.value, client_ip(request.scope))
    try:
        status, reply = await handle(
            request.method, key_id, len(parts) == 3, body, gateway.bus.keys, gateway.audit,
            actor, ctx.settings.key_rotation_overlap_seconds,
        )
    except Reply:
        raise
    except Exception as exc:
        message = "the api-keys bucket did not answer; retry later"
        raise gateway.fault("keys", exc, message) from None
    return Answer(status, reply, NO_STORE)
