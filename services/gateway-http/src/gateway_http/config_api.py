"""The config API: ``GET|PUT|DELETE /streams/{domain}/{source_id}/{stream_id}/config``.

Any valid key may read (GET/HEAD); writing (PUT/DELETE) needs an ``admin`` key
(``Action.MANAGE_CONFIGS``); every change is audited (``config_changed``/``config_deleted``).
Translates a request into a ``StreamConfigBucket`` call (libs/runtime, shared with the
``tributary streams`` CLI) and its outcome into a reply. Ids are taken from the *raw* path and
percent-decoded segment by segment, so any printable id works, ``/`` included (as ``%2F``):
the server's decoded path would have split it.
"""

from __future__ import annotations

from urllib.parse import unquote

import orjson
from starlette.requests import Request

from gateway_http.context import HttpContext
from gateway_http.metrics import CONFIG_REQUESTS
from tributary_access.apikeys import Action
from tributary_access.guard import client_ip
from tributary_contracts import AuditAction
from tributary_ingest import http
from tributary_ingest.http import Answer
from tributary_runtime.ops import Reply
from tributary_runtime.stream_configs import (
    ConfigProblem,
    StoredConfig,
    StreamConfigBucket,
    StreamScope,
    VersionConflict,
    parse_config,
)

PATH_SHAPE = "/streams/{domain}/{source_id}/{stream_id}/config"
PATH = "/streams/{rest:path}"
"""The route (the ids are read from the raw path, ``scope_from_path``)."""


def scope_from_path(raw_path: bytes) -> StreamScope | None:
    """The scope named by ``raw_path``; None when the path does not have the API's shape;
    ``ConfigProblem`` when it has but an id is invalid."""
    segments = raw_path.decode("latin-1").split("/")
    # "", "streams", domain, source, stream, "config"
    if len(segments) != 6 or segments[0] or segments[1] != "streams" or segments[5] != "config":
        return None
    try:
        domain, source, stream = (
            unquote(s, encoding="utf-8", errors="strict") for s in segments[2:5]
        )
    except UnicodeDecodeError:
        raise ConfigProblem([("path", "ids must be UTF-8 once percent-decoded")]) from None
    return StreamScope.parse(domain, source, stream)


def stored_reply(status: int, stored: StoredConfig) -> Answer:
    if stored.config is None:
        return Answer(
            409,
            {
                "error": f"the config stored for {stored.scope} is not a valid StreamConfig "
                f"({stored.problem}); PUT a valid one or DELETE it",
                "version": stored.version,
            },
        )
    return Answer(status, stored.to_json(), {"ETag": f'"{stored.version}"'})


def expected_version(if_match: str | None) -> int | None:
    """``If-Match: "<version>"`` (or a bare number) → that version; ``*`` or absent → None."""
    if if_match is None or if_match.strip() == "*":
        return None
    text = if_match.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise ConfigProblem([("If-Match", 'must be a config version, e.g. "7"')])
    return int(text)


async def get_config(bucket: StreamConfigBucket, scope: StreamScope) -> Answer:
    """GET: 200 config + version, 404 when none is stored."""
    stored = await bucket.get(scope)
    if stored is None:
        return Answer(404, {"error": f"no config stored for {scope}"})
    return stored_reply(200, stored)


async def put_config(
    bucket: StreamConfigBucket, scope: StreamScope, body: bytes, if_match: str | None
) -> Answer:
    """PUT: validate the body as a StreamConfig (422 naming the problem), store it, 200 with
    the stored config and its new version; with ``If-Match`` only over that version (412)."""
    if not body:
        return Answer(400, {"error": "request body is empty; expected a StreamConfig object"})
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return Answer(400, {"error": f"request body is not valid JSON: {exc}"})
    try:
        config = parse_config(document)
        expected = expected_version(if_match)
    except ConfigProblem as exc:
        return Answer(422, exc.to_reply())
    try:
        stored = await bucket.put(scope, config, expected)
    except VersionConflict as exc:
        current = await bucket.get(scope)
        return Answer(
            412,
            {"error": str(exc), "version": current.version if current is not None else None},
        )
    return stored_reply(200, stored)


async def delete_config(bucket: StreamConfigBucket, scope: StreamScope) -> Answer:
    """DELETE: 204, or 404 when none is stored."""
    if not await bucket.delete(scope):
        return Answer(404, {"error": f"no config stored for {scope}"})
    return Answer(204, None)


async def stream_config(ctx: HttpContext, request: Request) -> Answer:
    """GET|PUT|DELETE /streams/{domain}/{source_id}/{stream_id}/config (module docstring)."""
    gateway, method = ctx.gateway, request.method
    granted = await http.authenticate(gateway, request)
    reading = method in ("GET", "HEAD")
    http.check(gateway, request, granted, Action.READ if reading else Action.MANAGE_CONFIGS)
    try:
        scope = scope_from_path(request.scope.get("raw_path") or request.url.path.encode())
    except ConfigProblem as exc:
        return Answer(422, exc.to_reply())
    if scope is None:
        return Answer(404, {"error": f"not found; the config API is {PATH_SHAPE}"})
    try:
        if reading:
            return await get_config(ctx.configs, scope)
        if method == "PUT":
            body = await ctx.read_body(request)
            reply = await put_config(ctx.configs, scope, body, request.headers.get("if-match"))
            action = AuditAction.CONFIG_CHANGED
        else:
            reply = await delete_config(ctx.configs, scope)
            action = AuditAction.CONFIG_DELETED
    except Reply:
        raise
    except Exception as exc:
        raise gateway.fault(
            "config", exc, "the stream-configs bucket did not answer; nothing was changed, "
            "retry later",
        ) from None
    if reply.status < 300:
        version = (reply.body or {}).get("version")
        await gateway.audit.record(
            gateway.audit.event(
                action,
                key_id=granted.key_id,
                role=granted.record.role.value,
                client_ip=client_ip(request.scope),
                target=str(scope),
                reason=f"{method} config of {scope}",
                details={"version": version} if version is not None else {},
            )
        )
    return reply


def count(request: Request, answer: Answer) -> None:
    CONFIG_REQUESTS.labels(request.method, str(answer.status)).inc()
