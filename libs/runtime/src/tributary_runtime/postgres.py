"""The PostgreSQL connection settings every service that connects to PostgreSQL shares: the DSN
as a secret and ``POSTGRES_SSL_CA_FILE`` (TLS verified against that CA)."""

from __future__ import annotations

from pathlib import Path
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from pydantic import BaseModel, Field, SecretStr

DEFAULT_DSN = "postgresql://postgres@127.0.0.1:5432/tributary"


def dsn_with_ca(dsn: str, ca_file: Path | None) -> str:
    """``dsn`` with ``sslrootcert=<ca_file>`` and ``sslmode=verify-full`` added where absent."""
    if ca_file is None:
        return dsn
    parts = urlsplit(dsn)
    query = dict(parse_qsl(parts.query))
    query.setdefault("sslrootcert", str(ca_file))
    query.setdefault("sslmode", "verify-full")
    return urlunsplit(parts._replace(query=urlencode(query)))


class PostgresSettings(BaseModel):
    """``POSTGRES_DSN`` (a secret, or ``POSTGRES_DSN_FILE``) and ``POSTGRES_SSL_CA_FILE``; mixed
    into a service's settings (which may restate ``postgres_dsn``'s description)."""

    postgres_dsn: SecretStr = Field(
        default=SecretStr(DEFAULT_DSN),
        description=f"PostgreSQL DSN (default {DEFAULT_DSN}; or POSTGRES_DSN_FILE).",
    )
    postgres_ssl_ca_file: Path | None = Field(
        default=None,
        description="CA bundle to verify PostgreSQL's certificate: adds sslrootcert and "
        "sslmode=verify-full to the DSN unless it sets them (TLS can also be set in the DSN).",
    )

    @property
    def dsn(self) -> str:
        """The DSN to connect with (``POSTGRES_SSL_CA_FILE`` applied)."""
        return dsn_with_ca(self.postgres_dsn.get_secret_value(), self.postgres_ssl_ca_file)
