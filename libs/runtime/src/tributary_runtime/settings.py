"""Settings base: one pydantic-settings class per service derives from ``ServiceSettings``.

Names are prefix-free env vars (``NATS_URL``, ``PORT``…). ``load_settings`` validates before
anything connects and exits with one line per bad variable, naming it and what it expected.

Secrets come from the environment or from files, never from code (the defaults are local
development ones without any secret): every setting ``NAME`` can instead be given as
``NAME_FILE=/path`` (Docker/Kubernetes secrets), whose content (stripped of surrounding
whitespace) is the value; ``NAME`` itself wins when both are set.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Any, Literal, TypeVar

from pydantic import Field, SecretStr, ValidationError
from pydantic.fields import FieldInfo
from pydantic_settings import (
    BaseSettings,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
)

from tributary_contracts import Namespace

FILE_SUFFIX = "_FILE"


class FileVariablesSource(PydanticBaseSettingsSource):
    """``NAME_FILE=/path`` → the file's content as setting ``NAME``."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        variable = field_name.upper() + FILE_SUFFIX
        path = next((v for k, v in os.environ.items() if k.upper() == variable), None)
        if not path:
            return None, field_name, False
        try:
            return Path(path).read_text(encoding="utf-8").strip(), field_name, False
        except OSError as exc:
            raise ValueError(f"{variable}: cannot read {path}: {exc.strerror}") from None

    def __call__(self) -> dict[str, Any]:
        values: dict[str, Any] = {}
        for name, field in self.settings_cls.model_fields.items():
            value, key, _ = self.get_field_value(field, name)
            if value is not None:
                values[key] = value
        return values


class ServiceSettings(BaseSettings):
    """Settings every service has."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return (
            init_settings,
            env_settings,
            FileVariablesSource(settings_cls),
            dotenv_settings,
            file_secret_settings,
        )

    nats_url: str = Field(
        default="nats://127.0.0.1:4222", description="NATS server URL(s), comma separated."
    )
    bus_prefix: str = Field(
        default="",
        description=(
            "Namespace prefix for subjects, streams and buckets "
            "(empty in production; tests use one each)."
        ),
    )
    log_level: Literal["DEBUG", "INFO", "WARNING", "ERROR"] = Field(
        default="INFO", description="Log level."
    )
    log_format: Literal["json", "console", "auto"] = Field(
        default="auto", description="json, console, or auto (console on a terminal, else json)."
    )
    nats_creds: Path | None = Field(
        default=None,
        description="NATS credentials file (JWT + NKey seed, .creds) for decentralized auth.",
    )
    nats_user: str | None = Field(default=None, description="NATS user (user/password auth).")
    nats_password: SecretStr | None = Field(
        default=None, description="NATS password (or NATS_PASSWORD_FILE)."
    )
    nats_token: SecretStr | None = Field(
        default=None, description="NATS auth token (or NATS_TOKEN_FILE)."
    )
    nats_tls_ca_file: Path | None = Field(
        default=None, description="CA bundle to verify the NATS server (enables TLS)."
    )
    nats_tls_cert_file: Path | None = Field(
        default=None, description="Client certificate for NATS mutual TLS (with the key file)."
    )
    nats_tls_key_file: Path | None = Field(
        default=None, description="Private key of NATS_TLS_CERT_FILE."
    )
    nats_tls_hostname: str | None = Field(
        default=None, description="Server name to verify when it differs from the URL's host."
    )
    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(
        default=8000, ge=1, le=65535, description="HTTP port (health, ready, metrics, API)."
    )

    @property
    def namespace(self) -> Namespace:
        return Namespace(self.bus_prefix)


S = TypeVar("S", bound=BaseSettings)


def load_settings(cls: type[S]) -> S:
    """Read ``cls`` from the environment or exit 2 with one clear line per bad variable."""
    try:
        settings = cls()
        if isinstance(settings, ServiceSettings):
            _ = settings.namespace  # validates BUS_PREFIX
        return settings
    except (ValidationError, ValueError) as exc:
        if isinstance(exc, ValidationError):
            for error in exc.errors():
                name = "_".join(str(p) for p in error["loc"]).upper() or "settings"
                print(f"invalid setting {name}: {error['msg']}", file=sys.stderr)
        elif FILE_SUFFIX in str(exc):
            print(f"invalid setting {exc}", file=sys.stderr)
        else:
            print(f"invalid setting BUS_PREFIX: {exc}", file=sys.stderr)
        raise SystemExit(2) from None


def settings_table(cls: type[BaseSettings]) -> str:
    """Markdown table of ``cls``'s env vars, for the service README (tested against it)."""
    rows = ["| variable | default | meaning |", "|---|---|---|"]
    for name, field in cls.model_fields.items():
        default = "" if field.is_required() else repr(field.get_default(call_default_factory=True))
        rows.append(f"| `{name.upper()}` | `{default}` | {field.description or ''} |")
    return "\n".join(rows)
