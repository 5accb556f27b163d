"""``/health``, ``/ready`` and ``/metrics`` routes that every service exposes."""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import orjson
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

ReadyCheck = Callable[[], Awaitable[dict[str, bool]]]


def ops_routes(ready_check: ReadyCheck) -> list[Route]:
    """Liveness (always 200 while the process serves), readiness (every check true), metrics."""

    async def health(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def ready(_: Request) -> Response:
        checks = await ready_check()
        ok = all(checks.values())
        return JSONResponse({"ready": ok, "checks": checks}, status_code=200 if ok else 503)

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return [
        Route("/health", health, methods=["GET"]),
        Route("/ready", ready, methods=["GET"]),
        Route("/metrics", metrics, methods=["GET"]),
    ]


def json_response(
    status: int, body: dict[str, Any], headers: Mapping[str, str] | None = None
) -> Response:
    """A JSON reply serialised with orjson (what handlers answer, ``Reply``s included)."""
    return Response(orjson.dumps(body), status, headers, media_type="application/json")


class Reply(Exception):
    """An early JSON reply (4xx/503) raised from deep inside a request handler; the handler's
    top level turns it into the response."""

    def __init__(
        self, status: int, body: dict[str, Any], headers: dict[str, str] | None = None
    ) -> None:
        super().__init__(body.get("error", ""))
        self.status = status
        self.body = body
        self.headers = headers
