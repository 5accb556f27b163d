"""Run a service's ASGI app: uvicorn with uvloop + httptools (measured +30 % to +180 %)."""

from __future__ import annotations

import asyncio
import contextlib
import gc
import os
import socket
import sys
from collections.abc import Awaitable, Callable
from typing import Any

import uvicorn
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

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


HEADER_TIMEOUT_SECONDS = 10.0
"""Default of ``HTTP_HEADER_TIMEOUT_SECONDS``: how long a request's headers may take to arrive."""


class HeaderTimeoutProtocol(HttpToolsProtocol):
    """uvicorn's httptools protocol, closing a connection whose request headers do not arrive
    within ``header_timeout`` seconds of its first byte (or of the connection): uvicorn itself
    waits forever for headers that never finish (slowloris). Bodies are bounded per endpoint."""

    header_timeout = HEADER_TIMEOUT_SECONDS
    _header_timer: asyncio.TimerHandle | None = None

    def connection_made(self, transport: asyncio.Transport) -> None:  # type: ignore[override]
        super().connection_made(transport)
        self._start_header_timer()

    def on_message_begin(self) -> None:
        super().on_message_begin()
        self._start_header_timer()

    def on_headers_complete(self) -> None:
        self._stop_header_timer()
        super().on_headers_complete()

    def handle_websocket_upgrade(self) -> None:
        self._stop_header_timer()  # the transport now belongs to the WebSocket protocol
        super().handle_websocket_upgrade()

    def connection_lost(self, exc: Exception | None) -> None:
        self._stop_header_timer()
        super().connection_lost(exc)

    def _start_header_timer(self) -> None:
        if self._header_timer is None:
            self._header_timer = self.loop.call_later(self.header_timeout, self._headers_late)

    def _stop_header_timer(self) -> None:
        if self._header_timer is not None:
            self._header_timer.cancel()
            self._header_timer = None

    def _headers_late(self) -> None:
        self._header_timer = None
        self.transport.close()


def uvicorn_config(app: Any, settings: ServiceSettings, **options: Any) -> uvicorn.Config:
    """The services' uvicorn setup for ``app``; ``options`` (e.g. ``ws_max_size``) go to
    ``uvicorn.Config`` and override the defaults.

    ``X-Forwarded-For``/``-Proto`` are believed only from the proxies listed in
    ``FORWARDED_ALLOW_IPS`` (comma-separated addresses/networks, ``*`` = any): by default
    nobody, so a client cannot pick the address its rate limits and audit events are keyed on
    (uvicorn's own default trusts 127.0.0.1, i.e. every local client). Request headers must
    arrive within ``HTTP_HEADER_TIMEOUT_SECONDS`` (default 10): ``HeaderTimeoutProtocol``."""
    forwarded = os.environ.get("FORWARDED_ALLOW_IPS", "").strip()
    header_timeout = float(os.environ.get("HTTP_HEADER_TIMEOUT_SECONDS", HEADER_TIMEOUT_SECONDS))
    protocol = type("HeaderTimeout", (HeaderTimeoutProtocol,), {"header_timeout": header_timeout})
    return uvicorn.Config(
        app,
        **{
            "host": settings.host,
            "port": settings.port,
            "loop": "uvloop",
            "http": protocol,
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
