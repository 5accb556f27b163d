"""Run a service's ASGI app: uvicorn with uvloop + httptools (measured +30 % to +180 %)."""

from __future__ import annotations

import contextlib
import gc
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn

from tributary_runtime.settings import ServiceSettings

BeforeShutdown = Callable[[], Awaitable[None]]
STARTUP_FAILURE = 3
"""Exit status when the app never started (uvicorn's own)."""


class Server(uvicorn.Server):
    """uvicorn's server; with ``before_shutdown`` it first stops accepting connections and awaits
    that hook (e.g. to let open WebSockets finish and close cleanly), then does uvicorn's own
    shutdown (which closes whatever is still open)."""

    def __init__(self, config: uvicorn.Config, before_shutdown: BeforeShutdown | None = None):
        super().__init__(config)
        self._before_shutdown = before_shutdown

    async def shutdown(self, sockets: list[socket.socket] | None = None) -> None:
        if self._before_shutdown is not None:
            for server in self.servers:
                server.close()
            await self._before_shutdown()
        await super().shutdown(sockets)


def uvicorn_config(app: Any, settings: ServiceSettings, **options: Any) -> uvicorn.Config:
    """The services' uvicorn setup for ``app``; ``options`` (e.g. ``ws_max_size``) go to
    ``uvicorn.Config`` and override the defaults.

    ``X-Forwarded-For``/``-Proto`` are believed only from the proxies listed in
    ``FORWARDED_ALLOW_IPS`` (comma-separated addresses/networks, ``*`` = any): by default
    nobody, so a client cannot pick the address its rate limits and audit events are keyed on
    (uvicorn's own default trusts 127.0.0.1, i.e. every local client)."""
    forwarded = os.environ.get("FORWARDED_ALLOW_IPS", "").strip()
    return uvicorn.Config(
        app,
        **{
            "host": settings.host,
            "port": settings.port,
            "loop": "uvloop",
            "http": "httptools",
            "log_level": "warning",
            "access_log": False,
            "lifespan": "on",
            "timeout_graceful_shutdown": 10,
            "proxy_headers": bool(forwarded),
            "forwarded_allow_ips": forwarded or None,
            **options,
        },
    )


def build_server(
    app: Any,
    settings: ServiceSettings,
    *,
    before_shutdown: BeforeShutdown | None = None,
    server_class: type[Server] = Server,
    **options: Any,
) -> Server:
    """The server ``serve`` runs (tests run it in their own loop with ``server.serve()``)."""
    return server_class(uvicorn_config(app, settings, **options), before_shutdown)


def serve(
    app: Any,
    settings: ServiceSettings,
    *,
    before_shutdown: BeforeShutdown | None = None,
    **options: Any,
) -> None:
    """Serve ``app`` on ``settings.host:settings.port`` until SIGINT/SIGTERM, then shut down
    (awaiting ``before_shutdown`` first, if given). ``options`` go to ``uvicorn.Config``."""
    # Every point is a handful of short-lived objects, freed by reference counting; the cyclic
    # collector's default gen-0 threshold (700 allocations) made it run thousands of times per
    # second for nothing. Import-time objects live as long as the process: freeze them.
    gc.collect()
    gc.freeze()
    gc.set_threshold(50_000, 20, 100)
    server = build_server(app, settings, before_shutdown=before_shutdown, **options)
    with contextlib.suppress(KeyboardInterrupt):  # as uvicorn.run
        server.run()
    if not server.started:
        sys.exit(STARTUP_FAILURE)
