-- INSERT_READING
INSERT INTO dbo.sensor_readings (sensor_id, value, device_timestamp, ingest_timestamp) SELECT CAST(? AS INTEGER) AS anon_1, CAST(? AS FLOAT(53)) AS anon_2, CAST(? AS DATETIME2) AS anon_3, CAST(? AS DATETIME2) AS anon_4
WHERE NOT (EXISTS (SELECT dbo.sensor_readings.id
FROM dbo.sensor_readings WITH (UPDLOCK, HOLDLOCK)
WHERE dbo.sensor_readings.sensor_id = ? AND dbo.sensor_readings.device_timestamp = ?))

-- SELECT_LATEST
SELECT dbo.sensor_readings_latest.sensor_id, dbo.sensor_readings_latest.device_timestamp
FROM dbo.sensor_readings_latest WITH (UPDLOCK, HOLDLOCK)
WHERE dbo.sensor_readings_latest.sensor_id IN (__[POSTCOMPILE_sensor_ids])

-- UPDATE_LATEST
UPDATE dbo.sensor_readings_latest SET value=?, device_timestamp=?, updated_at=? WHERE dbo.sensor_readings_latest.sensor_id = ?

-- INSERT_LATEST
INSERT INTO dbo.sensor_readings_latest (sensor_id, value, device_timestamp, updated_at) VALUES (?, ?, ?, ?)

-- NEWEST_ALERT
SELECT dbo.alerts.sensor_id, max(dbo.alerts.triggered_at) AS max_1
FROM dbo.alerts WITH (UPDLOCK, HOLDLOCK)
WHERE dbo.alerts.sensor_id IN (__[POSTCOMPILE_sensor_ids]) GROUP BY dbo.alerts.sensor_id

-- CLOSE_ALERT
UPDATE dbo.alerts SET status=?, resolved_at=? WHERE dbo.alerts.sensor_id = ? AND dbo.alerts.status = ?

-- INSERT_ALERT
INSERT INTO dbo.alerts (sensor_id, severity, status, message, triggered_value, triggered_at, resolved_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)

-- NEWEST_EVENT
SELECT dbo.ml_events.sensor_id, max(dbo.ml_events.event_timestamp) AS max_1
FROM dbo.ml_events WITH (UPDLOCK, HOLDLOCK)
WHERE dbo.ml_events.sensor_id IN (__[POSTCOMPILE_sensor_ids]) AND dbo.ml_events.event_type = ? GROUP BY dbo.ml_events.sensor_id

-- CLOSE_EVENT
UPDATE dbo.ml_events SET status=?, resolved_at=? WHERE dbo.ml_events.sensor_id = ? AND dbo.ml_events.event_type = ? AND dbo.ml_events.status = ?

-- INSERT_EVENT
INSERT INTO dbo.ml_events (sensor_id, event_type, severity, status, message, value, event_timestamp, resolved_at, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)

-- procedure mode
EXEC dbo.sp_insert_reading_and_check_threshold @sensor_id = ?, @value = ?, @device_timestamp = ?
