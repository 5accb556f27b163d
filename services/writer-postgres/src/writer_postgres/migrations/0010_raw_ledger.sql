-- The raw ledger (seed 003's raw_record / ingest_error / ingest_parse), for the domains and
-- sources a gateway's RAW_LEDGER opts in: every selected input exactly as received, the points
-- that came of it and the errors. Additive only.
CREATE TABLE IF NOT EXISTS raw_record (
    id            bigserial PRIMARY KEY,
    record_id     text        NOT NULL UNIQUE,     -- RawRecord.record_id: a redelivery is one row
    time          timestamptz NOT NULL,            -- when the gateway received the input
    transport     text        NOT NULL,
    domain        text        NOT NULL,
    source_id     text        NOT NULL,
    content_type  text,
    payload       bytea       NOT NULL,            -- the input's bytes (first RAW_LEDGER_PAYLOAD_BYTES)
    payload_bytes integer     NOT NULL,            -- size of the whole input
    truncated     boolean     NOT NULL DEFAULT false,
    status        integer,                          -- reply given to the producer
    point_keys    jsonb       NOT NULL DEFAULT '[]'::jsonb,   -- [{stream_id, ts}] published
    error         text,                             -- why the whole input failed, if it did
    stored_at     timestamptz NOT NULL DEFAULT now()
);
CREATE INDEX IF NOT EXISTS raw_record_source_time ON raw_record (domain, source_id, time DESC);
CREATE INDEX IF NOT EXISTS raw_record_time ON raw_record (time);

-- One row per refused point of a recorded input, or one for the whole input's error.
CREATE TABLE IF NOT EXISTS ingest_error (
    id          bigserial PRIMARY KEY,
    record_id   text        NOT NULL REFERENCES raw_record (record_id) ON DELETE CASCADE,
    position    integer     NOT NULL,              -- 0.. within the record
    item_index  integer,                            -- the point's index in the input
    stream_id   text,
    reason      text        NOT NULL,
    excerpt     text,
    CONSTRAINT ingest_error_key UNIQUE (record_id, position)
);

-- One pane of glass per recorded input: what came in, what was published, what is stored,
-- what was refused and why.
CREATE OR REPLACE VIEW ingest_parse AS
SELECT r.id AS raw_id, r.record_id, r.time, r.transport, r.domain, r.source_id, r.status,
       r.payload_bytes, r.truncated, convert_from(r.payload, 'UTF8') AS payload_text,
       jsonb_array_length(r.point_keys) AS points_published,
       (SELECT count(*) FROM jsonb_to_recordset(r.point_keys) AS k(stream_id text, ts timestamptz)
        JOIN data_points d ON d.domain = r.domain AND d.source_id = r.source_id
                          AND d.stream_id = k.stream_id AND d.time = k.ts) AS points_stored,
       (SELECT count(*) FROM ingest_error e WHERE e.record_id = r.record_id) AS errors,
       COALESCE(r.error, (SELECT string_agg(e.reason, '; ' ORDER BY e.position)
                          FROM ingest_error e WHERE e.record_id = r.record_id)) AS error_reasons
FROM raw_record r;
