-- dbo.sp_insert_reading_and_check_threshold: the contract writer-sqlserver relies on in
-- MSSQL_WRITE_MODE=procedure, and a reference body for test and development databases.
--
-- The production database keeps its own (legacy) procedure, which also evaluates thresholds and
-- writes dbo.alerts, dbo.alert_notifications and DELTA_SPIKE rows of dbo.ml_events. Do NOT
-- apply this file there. The writer calls the procedure like this, once per reading, in time
-- order, all readings of one fetch inside ONE transaction that the writer commits:
--
--     EXEC dbo.sp_insert_reading_and_check_threshold
--          @sensor_id = <INT>, @value = <FLOAT>, @device_timestamp = <DATETIME2>
--
-- (No question marks in this file: some ODBC drivers count them as parameter markers.)
--
-- Contract:
--   @sensor_id         INT        legacy integer sensor id (DataPoint.legacy.sensor_id)
--   @value             FLOAT      the reading, always finite
--   @device_timestamp  DATETIME2  event time, UTC, without offset
--   - must be idempotent on (@sensor_id, @device_timestamp): after a lost ack JetStream
--     redelivers, and the writer calls again with the same arguments;
--   - must not COMMIT or ROLLBACK the caller's transaction (no BEGIN TRAN … COMMIT of its own
--     that could leave @@TRANCOUNT changed); result sets it returns are ignored;
--   - to refuse one reading for good, fail with a data or constraint error (SQLSTATE 22xxx or
--     23000, e.g. a CHECK or foreign key violation): the writer then dead-letters just that
--     reading with the error text and stores the others. Any other error (THROW/RAISERROR
--     surface as SQLSTATE 42000, deadlocks, timeouts) is retried with backoff and the message
--     dead-lettered after 10 deliveries.
--
-- Reference body (not run by the test suite here: no SQL Server on the CI machines): stores the
-- reading and the latest value idempotently; threshold evaluation is the legacy procedure's own.
CREATE OR ALTER PROCEDURE dbo.sp_insert_reading_and_check_threshold
    @sensor_id INT,
    @value FLOAT,
    @device_timestamp DATETIME2
AS
BEGIN
    SET NOCOUNT ON;
    IF EXISTS (SELECT 1 FROM dbo.sensor_readings WITH (UPDLOCK, HOLDLOCK)
               WHERE sensor_id = @sensor_id AND device_timestamp = @device_timestamp)
        RETURN;

    INSERT INTO dbo.sensor_readings (sensor_id, value, device_timestamp, ingest_timestamp)
    VALUES (@sensor_id, @value, @device_timestamp, SYSUTCDATETIME());

    UPDATE dbo.sensor_readings_latest WITH (UPDLOCK, HOLDLOCK)
       SET value = @value, device_timestamp = @device_timestamp, updated_at = SYSUTCDATETIME()
     WHERE sensor_id = @sensor_id AND device_timestamp < @device_timestamp;
    IF @@ROWCOUNT = 0 AND NOT EXISTS (SELECT 1 FROM dbo.sensor_readings_latest
                                      WHERE sensor_id = @sensor_id)
        INSERT INTO dbo.sensor_readings_latest (sensor_id, value, device_timestamp, updated_at)
        VALUES (@sensor_id, @value, @device_timestamp, SYSUTCDATETIME());
END;
GO
