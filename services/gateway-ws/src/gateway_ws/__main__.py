"""``python -m gateway_ws`` / ``tributary-gateway-ws``: read settings, log, serve."""

from __future__ import annotations

from gateway_ws.app import SERVICE_NAME, create_app, serve_options
from gateway_ws.settings import GatewayWsSettings
from tributary_runtime.logs import configure_logging
from tributary_runtime.serve import serve
from tributary_runtime.settings import load_settings


def main() -> None:
    settings = load_settings(GatewayWsSettings)
    configure_logging(SERVICE_NAME, settings.log_level, settings.log_format)
    app = create_app(settings)
    serve(app, settings, **serve_options(app, settings))


if __name__ == "__main__":
    main()
