-- Legacy IoT schema written by writer-sqlserver (SQL Server 2016+).
-- Generated from services/writer-sqlserver/src/writer_sqlserver/schema.py:
--     .venv/bin/python -m writer_sqlserver.schema > deploy/sqlserver/001_legacy_schema.sql
-- A test keeps this file equal to that output. The production database already has these
-- tables: compare, do not re-create. Apply with: sqlcmd -S host -d database -i <this file>

CREATE TABLE dbo.sensor_readings (
	id BIGINT NOT NULL IDENTITY,
	sensor_id INTEGER NOT NULL,
	value FLOAT(53) NOT NULL,
	device_timestamp DATETIME2 NOT NULL,
	ingest_timestamp DATETIME2 NOT NULL,
	PRIMARY KEY (id)
);
GO

CREATE UNIQUE INDEX ux_sensor_readings_sensor_ts ON dbo.sensor_readings (sensor_id, device_timestamp);
GO

CREATE TABLE dbo.sensor_readings_latest (
	sensor_id INTEGER NOT NULL,
	value FLOAT(53) NOT NULL,
	device_timestamp DATETIME2 NOT NULL,
	updated_at DATETIME2 NOT NULL,
	PRIMARY KEY (sensor_id)
);
GO

CREATE TABLE dbo.alerts (
	id BIGINT NOT NULL IDENTITY,
	sensor_id INTEGER NOT NULL,
	severity NVARCHAR(20) NOT NULL,
	status NVARCHAR(20) NOT NULL,
	message NVARCHAR(500) NOT NULL,
	triggered_value FLOAT(53) NOT NULL,
	triggered_at DATETIME2 NOT NULL,
	resolved_at DATETIME2 NULL,
	created_at DATETIME2 NOT NULL,
	PRIMARY KEY (id)
);
GO

CREATE UNIQUE INDEX ux_alerts_one_active ON dbo.alerts (sensor_id) WHERE status = N'active';
GO

CREATE UNIQUE INDEX ux_alerts_sensor_triggered ON dbo.alerts (sensor_id, triggered_at);
GO

CREATE TABLE dbo.ml_events (
	id BIGINT NOT NULL IDENTITY,
	sensor_id INTEGER NOT NULL,
	event_type NVARCHAR(50) NOT NULL,
	severity NVARCHAR(20) NOT NULL,
	status NVARCHAR(20) NOT NULL,
	message NVARCHAR(500) NOT NULL,
	value FLOAT(53) NOT NULL,
	event_timestamp DATETIME2 NOT NULL,
	resolved_at DATETIME2 NULL,
	created_at DATETIME2 NOT NULL,
	PRIMARY KEY (id)
);
GO

CREATE UNIQUE INDEX ux_ml_events_one_active ON dbo.ml_events (sensor_id, event_type) WHERE status = N'active';
GO

CREATE UNIQUE INDEX ux_ml_events_sensor_type_ts ON dbo.ml_events (sensor_id, event_type, event_timestamp);
GO
