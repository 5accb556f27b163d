"""Settings base: one pydantic-settings class per service derives from ``ServiceSettings``.

Names are prefix-free env vars (``NATS_URL``, ``PORT``…). ``load_settings`` validates before
anything connects and exits with one line per bad variable, naming it and what it expected.
"""

from __future__ import annotations

import sys
from typing import Literal, TypeVar

from pydantic import Field, ValidationError
from pydantic_settings import BaseSettings, SettingsConfigDict

from tributary_contracts import Namespace


class ServiceSettings(BaseSettings):
    """Settings every service has."""

    model_config = SettingsConfigDict(env_prefix="", extra="ignore", case_sensitive=False)

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
    host: str = Field(default="127.0.0.1", description="Address the HTTP server binds.")
    port: int = Field(
        default=8000, ge=1, le=65535, description="HTTP port (health, ready, metrics, API)."
    )

    @property
    def namespace(self) -> Namespace:
        return Namespace(self.bus_prefix)


class OperatorSettings(ServiceSettings):
    """Settings of the operator tools (``tributary`` CLI, the local fleet runner)."""

    jetstream_replicas: int | None = Field(
        default=None,
        ge=1,
        le=5,
        description=(
            "Replicas of every stream and bucket `tributary bootstrap` creates or updates "
            "(3 on a production cluster); unset keeps existing streams as they are, new ones R1."
        ),
    )


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
