"""Settings of gateway-http that are not covered by a running gateway."""

from __future__ import annotations

from pathlib import Path

from gateway_http.context import Postgres
from gateway_http.settings import GatewayHttpSettings


def test_postgres_dsn_is_a_secret_and_honours_the_ssl_ca_file() -> None:
    settings = GatewayHttpSettings(
        postgres_dsn="postgresql://gw:hunter2@db:5432/tributary",  # type: ignore[arg-type]
        postgres_ssl_ca_file=Path("/etc/ssl/pg-ca.pem"),
    )

    assert "hunter2" not in repr(settings)
    assert Postgres(settings).dsn == (
        "postgresql://gw:hunter2@db:5432/tributary"
        "?sslrootcert=%2Fetc%2Fssl%2Fpg-ca.pem&sslmode=verify-full"
    )
