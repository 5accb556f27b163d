-- ingest_rejects becomes the queryable store of everything a gateway refused (RejectedInput on
-- dp.rejected.>): one row per refused item. Additive only (see README "Migrations and image
-- rollback"): new nullable columns, a unique key for redeliveries, an index for retention.
ALTER TABLE ingest_rejects
    ADD COLUMN IF NOT EXISTS reject_id   text,         -- content hash: a redelivery is one row
    ADD COLUMN IF NOT EXISTS item_index  integer,      -- position in the request/row/batch
    ADD COLUMN IF NOT EXISTS topic       text,         -- MQTT topic, when it came over MQTT
    ADD COLUMN IF NOT EXISTS excerpt_truncated boolean NOT NULL DEFAULT false,
    ADD COLUMN IF NOT EXISTS stored_at   timestamptz NOT NULL DEFAULT now();

CREATE UNIQUE INDEX IF NOT EXISTS ingest_rejects_reject_id ON ingest_rejects (reject_id);
CREATE INDEX IF NOT EXISTS ingest_rejects_time ON ingest_rejects (time);
CREATE INDEX IF NOT EXISTS ingest_rejects_transport_time ON ingest_rejects (transport, time DESC);
