"""Connecting to NATS the same way in every service (auth and TLS from the settings)."""

from __future__ import annotations

import ssl
from typing import Any

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
        **nats_auth_options(settings),
    )


def nats_tls_context(settings: ServiceSettings) -> ssl.SSLContext | None:
    """A verifying TLS context when a CA or client certificate is configured (or the URL says
    ``tls://``), else None (plain TCP, the local development default)."""
    s = settings
    wants_tls = any(u.strip().startswith("tls://") for u in s.nats_url.split(","))
    if not (s.nats_tls_ca_file or s.nats_tls_cert_file or wants_tls):
        return None
    context = ssl.create_default_context(
        cafile=str(s.nats_tls_ca_file) if s.nats_tls_ca_file else None
    )
    if s.nats_tls_cert_file:
        context.load_cert_chain(
            str(s.nats_tls_cert_file), str(s.nats_tls_key_file) if s.nats_tls_key_file else None
        )
    return context


def nats_auth_options(settings: ServiceSettings) -> dict[str, Any]:
    """Keyword arguments of ``nats.connect`` for credentials and TLS (none by default)."""
    s = settings
    options: dict[str, Any] = {}
    if s.nats_creds:
        options["user_credentials"] = str(s.nats_creds)
    if s.nats_user:
        options["user"] = s.nats_user
    if s.nats_password is not None:
        options["password"] = s.nats_password.get_secret_value()
    if s.nats_token is not None:
        options["token"] = s.nats_token.get_secret_value()
    context = nats_tls_context(s)
    if context is not None:
        options["tls"] = context
        if s.nats_tls_hostname:
            options["tls_hostname"] = s.nats_tls_hostname
    return options
