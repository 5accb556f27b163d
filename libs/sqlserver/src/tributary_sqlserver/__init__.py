"""The legacy IoT SQL Server as every Tributary process opens it (writer-sqlserver, ml-batch,
gateway-http's status reads, ``tributary thresholds import``): one reading of ``MSSQL_DSN``."""

from tributary_sqlserver.dsn import (
    DEFAULT_ODBC_DRIVER,
    DEFAULT_TDS_VERSION,
    build_engine,
    engine_url,
    is_stand_in,
)

__all__ = [
    "DEFAULT_ODBC_DRIVER",
    "DEFAULT_TDS_VERSION",
    "build_engine",
    "engine_url",
    "is_stand_in",
]
