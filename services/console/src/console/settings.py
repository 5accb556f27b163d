"""Settings of the console (env vars, prefix-free; see the README's table)."""

from __future__ import annotations

from pydantic import Field, field_validator

from tributary_access.guard import GuardSettings
from tributary_contracts.ports import SERVICE_PORTS, local_url
from tributary_runtime.settings import ServiceSettings


def parse_service_urls(text: str) -> dict[str, str]:
    """``"name=http://host:port,…"`` → name → URL; empty → every service at its local port."""
    if not text.strip():
        return {n: local_url(n) for n in SERVICE_PORTS if n != "console"}
    urls = {}
    for item in text.split(","):
        name, sep, url = item.strip().partition("=")
        if not sep or not name or not url.startswith(("http://", "https://")):
            raise ValueError(f"expected name=http://host:port entries, got {item.strip()!r}")
        urls[name] = url.rstrip("/")
    return urls


class ConsoleSettings(GuardSettings, ServiceSettings):
    """What the console reads from the environment."""

    port: int = Field(
        default=SERVICE_PORTS["console"],
        ge=1,
        le=65535,
        description="HTTP port (console, API, health, metrics).",
    )
    postgres_read_dsn: str = Field(
        default="postgresql://tributary_reader@127.0.0.1:5432/tributary",
        description="PostgreSQL as the read-only role tributary_reader (writer-postgres "
        "migration 0007 creates it and grants SELECT); sessions are opened read-only too.",
    )
    postgres_timeout_seconds: float = Field(
        default=10.0, gt=0, description="Longest a query may run before the reply is 503."
    )
    fleet_services: str = Field(
        default="",
        description="Services the fleet page scrapes, name=http://host:port comma separated; "
        "empty: every service of the fleet at its standard local port.",
    )
    fleet_scrape_seconds: float = Field(
        default=5.0,
        ge=0.5,
        description="How often /health and /metrics of every service are "
        "scraped (rates are the counters' difference between two scrapes).",
    )
    api_key_cache_seconds: float = Field(
        default=5.0, ge=0, description="How long a looked-up API key is cached (revocation delay)."
    )
    max_page_points: int = Field(
        default=5000, ge=10, le=100_000, description="Most points one page of /api/v1/points holds."
    )
    chart_buckets: int = Field(
        default=400,
        ge=20,
        le=5000,
        description="Points of the explorer's chart: a range with more is downsampled to this many "
        "time buckets (min, max, mean and the worst class of each).",
    )
    secure_cookies: bool = Field(
        default=False,
        description="Mark the console's login cookie Secure (set it when served over HTTPS).",
    )
    publish_timeout_seconds: float = Field(
        default=5.0, gt=0, description="How long to wait for the bus (config writes, audit)."
    )

    @field_validator("fleet_services")
    @classmethod
    def _services(cls, value: str) -> str:
        parse_service_urls(value)
        return value

    @property
    def service_urls(self) -> dict[str, str]:
        return parse_service_urls(self.fleet_services)
