"""``python -m console`` / ``tributary-console``: read settings, log, serve."""

from __future__ import annotations

from console.app import SERVICE_NAME, create_app
from console.settings import ConsoleSettings
from tributary_runtime.logs import configure_logging
from tributary_runtime.serve import serve
from tributary_runtime.settings import load_settings


def main() -> None:
    settings = load_settings(ConsoleSettings)
    configure_logging(SERVICE_NAME, settings.log_level, settings.log_format)
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
