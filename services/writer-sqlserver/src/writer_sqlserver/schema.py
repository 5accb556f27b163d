"""The legacy IoT schema as SQLAlchemy metadata: one definition for SQL Server and the stand-in.

The seeds name the legacy tables (``dbo.sensor_readings``, ``dbo.sensor_readings_latest``,
``dbo.alerts``, ``dbo.ml_events``) and what goes into each, not their columns; the columns here
are the ones the legacy flows need (reading, latest value, alert lifecycle, DELTA_SPIKE events).
``deploy/sqlserver/001_legacy_schema.sql`` is this metadata compiled for SQL Server (a test keeps
the file equal to ``python -m writer_sqlserver.schema``). Timestamps are UTC, stored naive
(``DATETIME2``), as the legacy tables hold them.

No ``OUTPUT inserted.id`` (``implicit_returning=False``): the writer never needs generated ids,
and SQL Server refuses OUTPUT without INTO on tables with triggers, which legacy tables may have.

Uniqueness carries the legacy rules, so a bug cannot break them silently:
- one reading per ``(sensor_id, device_timestamp)`` (idempotency key of the legacy domain);
- at most one ``active`` alert per sensor and one ``active`` event per (sensor, event type)
  (filtered unique indexes: ``WHERE status = 'active'``).
"""

from __future__ import annotations

import sys

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Float,
    Identity,
    Index,
    Integer,
    MetaData,
    Table,
    Unicode,
)
from sqlalchemy.dialects import mssql
from sqlalchemy.engine import Dialect
from sqlalchemy.schema import CreateIndex, CreateTable

SCHEMA = "dbo"
ACTIVE = "active"
RESOLVED = "resolved"
DELTA_SPIKE = "DELTA_SPIKE"
MESSAGE_CHARS = 500

UtcDateTime = DateTime().with_variant(mssql.DATETIME2(), "mssql")  # type: ignore[no-untyped-call]
"""UTC time without offset: DATETIME2 on SQL Server, ``timestamp`` on PostgreSQL."""

metadata = MetaData(schema=SCHEMA)

sensor_readings = Table(
    "sensor_readings", metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("sensor_id", Integer, nullable=False),
    Column("value", Float(53), nullable=False),
    Column("device_timestamp", UtcDateTime, nullable=False),
    Column("ingest_timestamp", UtcDateTime, nullable=False),
    implicit_returning=False,
)
Index("ux_sensor_readings_sensor_ts", sensor_readings.c.sensor_id,
      sensor_readings.c.device_timestamp, unique=True)

sensor_readings_latest = Table(
    "sensor_readings_latest", metadata,
    Column("sensor_id", Integer, primary_key=True, autoincrement=False),
    Column("value", Float(53), nullable=False),
    Column("device_timestamp", UtcDateTime, nullable=False),
    Column("updated_at", UtcDateTime, nullable=False),
)

alerts = Table(
    "alerts", metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("sensor_id", Integer, nullable=False),
    Column("severity", Unicode(20), nullable=False),
    Column("status", Unicode(20), nullable=False),
    Column("message", Unicode(MESSAGE_CHARS), nullable=False),
    Column("triggered_value", Float(53), nullable=False),
    Column("triggered_at", UtcDateTime, nullable=False),
    Column("resolved_at", UtcDateTime, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    implicit_returning=False,
)
Index("ux_alerts_sensor_triggered", alerts.c.sensor_id, alerts.c.triggered_at, unique=True)
Index("ux_alerts_one_active", alerts.c.sensor_id, unique=True,
      mssql_where=alerts.c.status == ACTIVE, postgresql_where=alerts.c.status == ACTIVE)

ml_events = Table(
    "ml_events", metadata,
    Column("id", BigInteger, Identity(), primary_key=True),
    Column("sensor_id", Integer, nullable=False),
    Column("event_type", Unicode(50), nullable=False),
    Column("severity", Unicode(20), nullable=False),
    Column("status", Unicode(20), nullable=False),
    Column("message", Unicode(MESSAGE_CHARS), nullable=False),
    Column("value", Float(53), nullable=False),
    Column("event_timestamp", UtcDateTime, nullable=False),
    Column("resolved_at", UtcDateTime, nullable=True),
    Column("created_at", UtcDateTime, nullable=False),
    implicit_returning=False,
)
Index("ux_ml_events_sensor_type_ts", ml_events.c.sensor_id, ml_events.c.event_type,
      ml_events.c.event_timestamp, unique=True)
Index("ux_ml_events_one_active", ml_events.c.sensor_id, ml_events.c.event_type, unique=True,
      mssql_where=ml_events.c.status == ACTIVE, postgresql_where=ml_events.c.status == ACTIVE)

LEGACY_TABLES = (sensor_readings, sensor_readings_latest, alerts, ml_events)

HEADER = """\
-- Legacy IoT schema written by writer-sqlserver (SQL Server 2016+).
-- Generated from services/writer-sqlserver/src/writer_sqlserver/schema.py:
--     .venv/bin/python -m writer_sqlserver.schema > deploy/sqlserver/001_legacy_schema.sql
-- A test keeps this file equal to that output. The production database already has these
-- tables: compare, do not re-create. Apply with: sqlcmd -S host -d database -i <this file>
"""


def _clean(compiled: object) -> str:
    lines = [line.rstrip() for line in str(compiled).strip().splitlines()]
    return "\n".join(lines) + ";\nGO\n"


def ddl(dialect: Dialect | None = None) -> str:
    """CREATE TABLE / CREATE INDEX statements of the legacy schema for ``dialect`` (mssql)."""
    dialect = dialect or mssql.dialect()  # type: ignore[no-untyped-call]
    parts = [HEADER]
    for table in LEGACY_TABLES:
        parts.append(_clean(CreateTable(table).compile(dialect=dialect)))
        for index in sorted(table.indexes, key=lambda i: str(i.name)):
            parts.append(_clean(CreateIndex(index).compile(dialect=dialect)))
    return "\n".join(parts)


if __name__ == "__main__":
    sys.stdout.write(ddl())
