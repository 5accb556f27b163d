"""``python -m writer_postgres``: read settings, then serve the ops endpoints and the writer."""

from __future__ import annotations

from tributary_runtime.logs import configure_logging
from tributary_runtime.serve import serve
from tributary_runtime.settings import load_settings
from writer_postgres.app import create_app
from writer_postgres.settings import WriterPostgresSettings


def main() -> None:
    settings = load_settings(WriterPostgresSettings)
    configure_logging("writer-postgres", settings.log_level, settings.log_format)
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
