"""``python -m classifier`` / ``tributary-classifier``: run the classifier service."""

from __future__ import annotations

from classifier.app import SERVICE_NAME, create_app
from classifier.settings import ClassifierSettings
from tributary_runtime.logs import configure_logging
from tributary_runtime.serve import serve
from tributary_runtime.settings import load_settings


def main() -> None:
    settings = load_settings(ClassifierSettings)
    configure_logging(SERVICE_NAME, settings.log_level, settings.log_format)
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
