"""``python -m csv_importer`` / ``tributary-csv-importer``: read settings, log, serve."""

from __future__ import annotations

from csv_importer.app import SERVICE_NAME, create_app
from csv_importer.settings import CsvImporterSettings
from tributary_runtime.logs import configure_logging
from tributary_runtime.serve import serve
from tributary_runtime.settings import load_settings


def main() -> None:
    settings = load_settings(CsvImporterSettings)
    configure_logging(SERVICE_NAME, settings.log_level, settings.log_format)
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
