from __future__ import annotations

from pathlib import Path

from tributary_runtime.postgres import PostgresSettings, dsn_with_ca


def test_a_ca_file_turns_on_verified_tls_unless_the_dsn_says_otherwise() -> None:
    base = "postgresql://u@db:5432/tributary"
    assert dsn_with_ca(base, None) == base
    assert dsn_with_ca(base, Path("/ca.pem")) == (
        base + "?sslrootcert=%2Fca.pem&sslmode=verify-full"
    )
    assert dsn_with_ca(base + "?sslmode=require", Path("/ca.pem")) == (
        base + "?sslmode=require&sslrootcert=%2Fca.pem"
    )


def test_the_dsn_is_a_secret_and_the_ca_file_applies_to_it() -> None:
    settings = PostgresSettings(
        postgres_dsn="postgresql://u:hunter2@db:5432/x",  # type: ignore[arg-type]
        postgres_ssl_ca_file=Path("/ca.pem"),
    )
    assert "hunter2" not in repr(settings)
    assert settings.dsn == (
        "postgresql://u:hunter2@db:5432/x?sslrootcert=%2Fca.pem&sslmode=verify-full"
    )
