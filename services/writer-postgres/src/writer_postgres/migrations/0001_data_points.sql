-- data_points: one row per classified point, unique on the idempotency key.
-- TimescaleDB hypertable when the extension can be created here; otherwise native range
-- partitioning by time with a DEFAULT partition (monthly partitions are kept ahead by the
-- writer, see partitions.py), so no point is ever refused for its time.
DO $migration$
DECLARE
    use_timescale boolean := false;
    columns text := $cols$
        time         timestamptz      NOT NULL,
        domain       text             NOT NULL,
        source_id    text             NOT NULL,
        stream_id    text             NOT NULL,
        value        double precision NOT NULL,
        cls          text             NOT NULL,
        reason       text,
        stream_type  text,
        sequence     bigint,
        metadata     jsonb            NOT NULL DEFAULT '{}'::jsonb,
        transport    text,
        received_at  timestamptz,
        -- The unique key also serves "latest points of a stream" (scanned backwards, time desc),
        -- so no second index is paid for on every insert.
        CONSTRAINT data_points_key UNIQUE (domain, source_id, stream_id, time)
    $cols$;
BEGIN
    IF EXISTS (SELECT 1 FROM pg_available_extensions WHERE name = 'timescaledb') THEN
        BEGIN
            CREATE EXTENSION IF NOT EXISTS timescaledb;
            use_timescale := true;
        EXCEPTION WHEN OTHERS THEN
            -- Installed but unusable (e.g. not in shared_preload_libraries): fall back.
            RAISE WARNING 'timescaledb is available but cannot be created (%): '
                          'using native partitioning', SQLERRM;
        END;
    END IF;

    IF use_timescale THEN
        EXECUTE format('CREATE TABLE IF NOT EXISTS data_points (%s)', columns);
        PERFORM create_hypertable('data_points', 'time', if_not_exists => TRUE);
    ELSE
        EXECUTE format('CREATE TABLE IF NOT EXISTS data_points (%s) PARTITION BY RANGE (time)',
                       columns);
        CREATE TABLE IF NOT EXISTS data_points_default PARTITION OF data_points DEFAULT;
    END IF;
END
$migration$;
