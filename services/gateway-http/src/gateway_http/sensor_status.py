"""What is stored about legacy sensors, read from the database that owns domain ``iot``
(``SINK_ROUTES``): PostgreSQL (``data_points``, ``stream_alerts``, filled by writer-postgres) or
the legacy SQL Server (``dbo.sensor_readings``, ``dbo.alerts``, ``dbo.ml_events``, filled by
writer-sqlserver, read through ``tributary_sqlserver.legacy_reads``).

Kept free of HTTP: ``StoredIot`` answers ``status(sensor_id, sources)`` and ``readings(...)``,
``reading_body`` and ``tributary_runtime.sensor_status.status_body`` (shared with the console)
build the legacy replies. Failures of the database
are raised as ``StoreUnavailable`` naming it; the caller answers 503.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import asyncpg

from tributary_runtime.sensor_status import (
    IOT_DOMAIN,
    LATEST_SQL,
    LEGACY_CLASS,
    OPEN_ALERT_SQL,
    iso,
    status_body,
)

_T = TypeVar("_T")

READINGS_SQL = """
SELECT stream_id, value, time, cls, reason FROM data_points
 WHERE domain = $1 AND source_id = $2
 ORDER BY time DESC, stream_id LIMIT $3
"""


class StoreUnavailable(Exception):
    """The owning database did not answer (``store`` names it: postgresql or sqlserver)."""

    def __init__(self, store: str, error: BaseException) -> None:
        super().__init__(f"{store}: {type(error).__name__}: {error}"[:300])
        self.store = store
        self.error_type = type(error).__name__[:40]


class StoredIot:
    """Reads of stored IoT readings from the owning database (module docstring)."""

    def __init__(self, settings: Any, postgres: Callable[[], Awaitable[asyncpg.Pool]]) -> None:
        self._settings = settings
        self._postgres = postgres
        self._engine: Any = None
        self.owner = settings.routes.sink_for(IOT_DOMAIN) or "postgres"

    def _sqlserver(self) -> Any:
        if self._engine is None:
            if self._settings.mssql_dsn is None:
                raise StoreUnavailable(
                    "sqlserver",
                    RuntimeError(
                        "SINK_ROUTES gives domain iot to sqlserver but MSSQL_DSN is not set on "
                        "gateway-http"
                    ),
                )
            from tributary_sqlserver import build_engine

            self._engine = build_engine(
                self._settings.mssql_dsn.get_secret_value(),
                odbc_driver=self._settings.mssql_odbc_driver,
                tds_version=self._settings.mssql_tds_version,
                timeout=self._settings.ops_probe_timeout_seconds * 2,
                pool_size=2,
            )
        return self._engine

    def close(self) -> None:
        if self._engine is not None:
            self._engine.dispose()
            self._engine = None

    async def status(self, sensor_id: int, sources: list[str]) -> tuple[Any | None, Any | None]:
        """``(latest reading, open alert)`` of the sensor (rows with the fields
        ``status_body`` reads), each None when nothing is stored."""
        if self.owner == "sqlserver":
            from tributary_sqlserver.legacy_reads import sensor_status

            return await self._in_sqlserver(sensor_status, sensor_id)
        try:
            pool = await self._postgres()
            async with pool.acquire() as conn:
                latest = await conn.fetchrow(LATEST_SQL, IOT_DOMAIN, sources, str(sensor_id))
                alert = await conn.fetchrow(OPEN_ALERT_SQL, IOT_DOMAIN, sources, str(sensor_id))
        except (asyncpg.UndefinedTableError, asyncpg.InvalidCatalogNameError):
            return None, None  # the writer has not created its tables yet: nothing stored
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise StoreUnavailable("postgresql", exc) from None
        return latest, alert

    async def readings(self, device_uuid: str, sensor_ids: list[int], limit: int) -> list[Any]:
        """The device's latest ``limit`` stored readings, newest first."""
        if self.owner == "sqlserver":
            from tributary_sqlserver.legacy_reads import recent_readings

            return list(await self._in_sqlserver(recent_readings, sensor_ids, limit))
        try:
            pool = await self._postgres()
            async with pool.acquire() as conn:
                return list(await conn.fetch(READINGS_SQL, IOT_DOMAIN, device_uuid, limit))
        except (asyncpg.UndefinedTableError, asyncpg.InvalidCatalogNameError):
            return []
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError, TimeoutError) as exc:
            raise StoreUnavailable("postgresql", exc) from None

    async def _in_sqlserver(self, read: Callable[..., _T], *args: Any) -> _T:
        try:
            return await asyncio.to_thread(read, self._sqlserver(), *args)
        except StoreUnavailable:
            raise
        except Exception as exc:  # the driver's errors (pyodbc / psycopg2 / SQLAlchemy)
            raise StoreUnavailable("sqlserver", exc) from None


def reading_body(row: Any, sensors: dict[str, str] | None = None) -> dict[str, Any]:
    """One stored reading as ``/devices/{uuid}/readings`` lists it."""
    stream_id = row["stream_id"]
    return {
        "sensor_id": int(stream_id) if str(stream_id).isdigit() else stream_id,
        "sensor_uuid": (sensors or {}).get(str(stream_id)),
        "value": row["value"],
        "timestamp": iso(row["time"]),
        "classification": LEGACY_CLASS.get(row["cls"], row["cls"]),
        "cls": row["cls"],
        "reason": row["reason"],
    }


__all__ = ["LEGACY_CLASS", "StoreUnavailable", "StoredIot", "reading_body", "status_body"]
