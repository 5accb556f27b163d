"""``python -m gateway_http`` / ``tributary-gateway-http``: read settings, log, serve."""

from __future__ import annotations

from gateway_http.app import create_app
from gateway_http.context import SERVICE_NAME
from gateway_http.settings import GatewayHttpSettings
from tributary_runtime.logs import configure_logging
from tributary_runtime.serve import serve
from tributary_runtime.settings import load_settings


def main() -> None:
    settings = load_settings(GatewayHttpSettings)
    configure_logging(SERVICE_NAME, settings.log_level, settings.log_format)
    app = create_app(settings)
    serve(app, settings)


if __name__ == "__main__":
    main()
