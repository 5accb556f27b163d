"""``python -m gateway_mqtt`` / ``tributary-gateway-mqtt``: read settings, log, serve."""

from __future__ import annotations

import gc

from gateway_mqtt.app import SERVICE_NAME, create_app
from gateway_mqtt.settings import GatewayMqttSettings
from tributary_runtime.logs import configure_logging
from tributary_runtime.serve import serve
from tributary_runtime.settings import load_settings


def main() -> None:
    settings = load_settings(GatewayMqttSettings)
    configure_logging(SERVICE_NAME, settings.log_level, settings.log_format)
    app = create_app(settings)
    gc.freeze()  # long-lived objects out of the cyclic GC's reach (as gateway-http does)
    serve(app, settings)


if __name__ == "__main__":
    main()
