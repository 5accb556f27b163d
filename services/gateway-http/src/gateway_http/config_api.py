"""The config API: ``GET|PUT|DELETE /streams/{domain}/{source_id}/{stream_id}/config``.

Translates a request into a ``StreamConfigBucket`` call (libs/runtime, shared with the
``tributary streams`` CLI) and its outcome into a reply. Ids are taken from the *raw* path and
percent-decoded segment by segment, so any printable id works, ``/`` included (as ``%2F``):
the server's decoded path would have split it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote

import orjson

from tributary_runtime.stream_configs import (
    ConfigProblem,
    StoredConfig,
    StreamConfigBucket,
    StreamScope,
    VersionConflict,
    parse_config,
)

PATH_SHAPE = "/streams/{domain}/{source_id}/{stream_id}/config"


@dataclass
class ConfigReply:
    """What the handler answers: status, JSON body (None for 204), extra headers."""

    status: int
    body: dict[str, Any] | None
    headers: dict[str, str] | None = None


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


def stored_reply(status: int, stored: StoredConfig) -> ConfigReply:
    if stored.config is None:
        return ConfigReply(
            409,
            {
                "error": f"the config stored for {stored.scope} is not a valid StreamConfig "
                f"({stored.problem}); PUT a valid one or DELETE it",
                "version": stored.version,
            },
        )
    return ConfigReply(status, stored.to_json(), {"ETag": f'"{stored.version}"'})


def expected_version(if_match: str | None) -> int | None:
    """``If-Match: "<version>"`` (or a bare number) → that version; ``*`` or absent → None."""
    if if_match is None or if_match.strip() == "*":
        return None
    text = if_match.strip().removeprefix("W/").strip('"')
    if not text.isdigit():
        raise ConfigProblem([("If-Match", 'must be a config version, e.g. "7"')])
    return int(text)


async def get_config(bucket: StreamConfigBucket, scope: StreamScope) -> ConfigReply:
    """GET: 200 config + version, 404 when none is stored."""
    stored = await bucket.get(scope)
    if stored is None:
        return ConfigReply(404, {"error": f"no config stored for {scope}"})
    return stored_reply(200, stored)


async def put_config(
    bucket: StreamConfigBucket, scope: StreamScope, body: bytes, if_match: str | None
) -> ConfigReply:
    """PUT: validate the body as a StreamConfig (422 naming the problem), store it, 200 with
    the stored config and its new version; with ``If-Match`` only over that version (412)."""
    if not body:
        return ConfigReply(400, {"error": "request body is empty; expected a StreamConfig object"})
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError as exc:
        return ConfigReply(400, {"error": f"request body is not valid JSON: {exc}"})
    try:
        config = parse_config(document)
        expected = expected_version(if_match)
    except ConfigProblem as exc:
        return ConfigReply(422, exc.to_reply())
    try:
        stored = await bucket.put(scope, config, expected)
    except VersionConflict as exc:
        current = await bucket.get(scope)
        return ConfigReply(
            412,
            {"error": str(exc), "version": current.version if current is not None else None},
        )
    return stored_reply(200, stored)


async def delete_config(bucket: StreamConfigBucket, scope: StreamScope) -> ConfigReply:
    """DELETE: 204, or 404 when none is stored."""
    if not await bucket.delete(scope):
        return ConfigReply(404, {"error": f"no config stored for {scope}"})
    return ConfigReply(204, None)
