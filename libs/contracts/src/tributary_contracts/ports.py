"""Every service's standard HTTP port: the one table. Each service's settings take its default
``PORT`` from here, ``tributary status``, the console, ``deploy/local/fleet.py`` and the e2e
fleet find the services by it, and tests/deploy holds compose and Kubernetes to it."""

from __future__ import annotations

SERVICE_PORTS: dict[str, int] = {
    "gateway-http": 8001,
    "gateway-ws": 8002,
    "csv-importer": 8003,
    "gateway-mqtt": 8004,
    "classifier": 8010,
    "writer-postgres": 8020,
    "writer-sqlserver": 8021,
    "ml-batch": 8030,
    "console": 8040,
}


def local_url(service: str, port_offset: int = 0) -> str:
    """``http://127.0.0.1:<port>`` of ``service`` on this machine (``port_offset`` added)."""
    return f"http://127.0.0.1:{SERVICE_PORTS[service] + port_offset}"
