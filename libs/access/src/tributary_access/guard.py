"""What every public-facing service puts in front of its handlers: bounded request headers and
the client's address, plus the settings of both and of the rate limits (``ratelimit``).

uvicorn's httptools parser bounds nothing we rely on, so ``HeaderLimits`` (ASGI middleware)
refuses requests whose headers are too many or too large with ``431`` and a JSON reason (a
WebSocket handshake is refused the same way, before the socket opens).
"""

from __future__ import annotations

from collections.abc import MutableMapping
from typing import Any

import orjson
from pydantic import Field

from tributary_access.ratelimit import RateLimitSettings

Scope = MutableMapping[str, Any]


class GuardSettings(RateLimitSettings):
    """Rate limits plus header bounds (env vars of the same names)."""

    max_header_bytes: int = Field(
        default=16 * 1024,
        ge=1024,
        description="Largest total size of a request's headers; larger → 431.",
    )
    max_header_count: int = Field(
        default=64, ge=8, description="Most headers in one request; more → 431."
    )


def client_ip(scope: Scope) -> str | None:
    """The client's address as the server saw it (``X-Forwarded-For`` applies only from the
    proxies in ``FORWARDED_ALLOW_IPS``, by default none: ``serve.uvicorn_config``)."""
    client = scope.get("client")
    return str(client[0]) if client else None


def raw_header(scope: Scope, name: bytes) -> str | None:
    """The first value of header ``name`` (lower case, as ASGI servers give names), read from
    the scope's raw list: what ``request.headers.get`` answers without building ``Headers``."""
    for key, value in scope.get("headers", ()):
        if key == name:
            return str(value.decode("latin-1"))
    return None


class HeaderLimits:
    """ASGI middleware: 431 when headers exceed ``max_bytes`` in total or ``max_count``."""

    def __init__(self, app: Any, max_bytes: int, max_count: int) -> None:
        self.app = app
        self.max_bytes = max_bytes
        self.max_count = max_count

    def problem(self, headers: list[tuple[bytes, bytes]]) -> str | None:
        if len(headers) > self.max_count:
            return f"request has {len(headers)} headers; at most {self.max_count}"
        size = 4 * len(headers)
        for k, v in headers:
            size += len(k) + len(v)
        if size > self.max_bytes:
            return f"request headers are {size} bytes; at most {self.max_bytes} bytes"
        return None

    async def __call__(self, scope: Scope, receive: Any, send: Any) -> None:
        if scope["type"] in ("http", "websocket"):
            problem = self.problem(scope.get("headers", []))
            if problem is not None:
                body = orjson.dumps({"error": problem})
                if scope["type"] == "websocket":
                    # Answered as HTTP when the server supports it, else closed (1008 → 403).
                    if "websocket.http.response" in scope.get("extensions", {}):
                        await send(_start("websocket.http.response.start", body))
                        await send({"type": "websocket.http.response.body", "body": body})
                    else:
                        await send({"type": "websocket.close", "code": 1008, "reason": problem})
                    return
                await send(_start("http.response.start", body))
                await send({"type": "http.response.body", "body": body})
                return
        await self.app(scope, receive, send)


def _start(kind: str, body: bytes) -> dict[str, Any]:
    return {
        "type": kind,
        "status": 431,
        "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(body)).encode()),
        ],
    }
