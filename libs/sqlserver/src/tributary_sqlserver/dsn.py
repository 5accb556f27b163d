"""``MSSQL_DSN`` → a SQLAlchemy URL and engine, the same way in every process.

Accepted forms:

- ``mssql://user:password@host:1433/db`` (what compose and Kubernetes give) and
  ``mssql+pyodbc://…``: pyodbc with the ODBC driver named by ``odbc_driver`` unless the URL
  names one (``?driver=…``) or carries ``odbc_connect``; FreeTDS also gets ``TDS_Version``.
  Without a driver pyodbc looks the host up as an ODBC *data source name* and fails with
  ``IM002 Data source name not found and no default driver specified``; naming the driver is
  what avoids that.
- an ODBC connection string (``Driver={…};Server=…;Database=…;UID=…;PWD=…``): passed whole as
  ``odbc_connect``.
- ``postgresql://…``: the PostgreSQL stand-in of the legacy schema (development and tests here,
  where no SQL Server exists), through psycopg2.
"""

from __future__ import annotations

from typing import Any
from urllib.parse import quote_plus

from sqlalchemy import create_engine, event
from sqlalchemy.engine import URL, Engine, make_url

DEFAULT_ODBC_DRIVER = "FreeTDS"
"""Debian's tdsodbc (the images install it); e.g. "ODBC Driver 18 for SQL Server" elsewhere."""
DEFAULT_TDS_VERSION = "7.4"


def engine_url(
    dsn: str, odbc_driver: str = DEFAULT_ODBC_DRIVER, tds_version: str = DEFAULT_TDS_VERSION
) -> URL:
    """The SQLAlchemy URL of ``dsn`` (module docstring); ``ValueError`` naming the problem."""
    text = dsn.strip()
    if not text:
        raise ValueError("MSSQL_DSN is empty")
    if "://" not in text:
        if "=" not in text:
            raise ValueError(
                "MSSQL_DSN must be a URL (mssql://user:pass@host:1433/db) or an ODBC connection "
                "string (Driver={...};Server=...;...)"
            )
        return make_url("mssql+pyodbc:///?odbc_connect=" + quote_plus(text))
    try:
        url = make_url(text)
    except Exception as exc:  # sqlalchemy.exc.ArgumentError
        raise ValueError(f"MSSQL_DSN is not a valid URL: {exc}") from None
    if url.drivername.startswith("postgresql"):
        return url.set(drivername="postgresql+psycopg2")
    if url.get_backend_name() != "mssql":
        raise ValueError(
            f"MSSQL_DSN scheme {url.drivername!r} is neither mssql:// nor postgresql:// "
            "(the stand-in)"
        )
    query = dict(url.query)
    if "odbc_connect" not in query:
        query.setdefault("driver", odbc_driver)
        if query["driver"] == "FreeTDS":
            query.setdefault("TDS_Version", tds_version)
    return url.set(drivername="mssql+pyodbc", query=query)


def is_stand_in(url: URL) -> bool:
    return url.get_backend_name() == "postgresql"


def build_engine(
    dsn: str,
    *,
    odbc_driver: str = DEFAULT_ODBC_DRIVER,
    tds_version: str = DEFAULT_TDS_VERSION,
    timeout: float = 30.0,
    pool_size: int = 2,
    fast_executemany: bool = True,
) -> Engine:
    """A small pooled engine on ``dsn``; every statement times out after ``timeout`` s."""
    url = engine_url(dsn, odbc_driver, tds_version)
    options: dict[str, Any] = {
        "pool_size": pool_size,
        "max_overflow": 0,
        "pool_pre_ping": True,
        "pool_timeout": timeout,
    }
    if url.get_backend_name() == "mssql":
        options["fast_executemany"] = fast_executemany
        options["connect_args"] = {"timeout": int(timeout)}  # login timeout, seconds
    else:  # stand-in: psycopg2's execute_batch (pages of statements) for executemany
        options["executemany_mode"] = "values_plus_batch"
        options["connect_args"] = {
            "connect_timeout": int(timeout),
            "options": f"-c statement_timeout={int(timeout * 1000)}",
        }
    engine = create_engine(url, **options)
    if url.get_backend_name() == "mssql":

        @event.listens_for(engine, "connect")
        def _query_timeout(dbapi_connection: Any, _record: Any) -> None:
            dbapi_connection.timeout = int(timeout)  # pyodbc: per-statement timeout → HYT00

    return engine
