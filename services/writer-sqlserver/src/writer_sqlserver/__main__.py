"""``python -m writer_sqlserver``: read settings, then serve the ops endpoints and the writer."""

from __future__ import annotations

import sys

from tributary_runtime.logs import configure_logging
from tributary_runtime.serve import serve
from tributary_runtime.settings import load_settings
from writer_sqlserver.app import create_app
from writer_sqlserver.settings import WriterSqlServerSettings


def main() -> None:
    settings = load_settings(WriterSqlServerSettings)
    configure_logging("writer-sqlserver", settings.log_level, settings.log_format)
    try:
        import pyodbc  # noqa: F401  (fails here, clearly, when unixODBC is missing)
    except ImportError as exc:
        if settings.dsn.startswith("mssql"):
            print(f"writer-sqlserver: pyodbc cannot load ({exc}); install unixodbc and tdsodbc "
                  "(make install does)", file=sys.stderr)
            raise SystemExit(2) from None
    serve(create_app(settings), settings)


if __name__ == "__main__":
    main()
