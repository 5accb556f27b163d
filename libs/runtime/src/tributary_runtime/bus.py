"""Connecting to NATS the same way in every service."""

from __future__ import annotations

import nats
import structlog
from nats.aio.client import Client

from tributary_runtime.settings import ServiceSettings


async def connect_nats(
    settings: ServiceSettings, name: str, reconnect_attempts: int = -1
) -> Client:
    """Connect; by default retry forever, so a bus outage is waited out, never a crash.

    Short-lived commands pass a small ``reconnect_attempts`` to fail fast with a clear message.
    """
    log = structlog.get_logger("nats")

    async def on_error(exc: Exception) -> None:
        # nats-py's default logs a traceback per failed attempt; one line says the same.
        log.warning("nats connection problem", error=f"{type(exc).__name__}: {exc}")

    async def on_disconnected() -> None:
        log.warning("nats disconnected; reconnecting")

    async def on_reconnected() -> None:
        log.info("nats reconnected")

    return await nats.connect(
        servers=[s.strip() for s in settings.nats_url.split(",")],
        name=name,
        connect_timeout=5,
        max_reconnect_attempts=reconnect_attempts,
        reconnect_time_wait=1,
        error_cb=on_error,
        disconnected_cb=on_disconnected,
        reconnected_cb=on_reconnected,
    )
