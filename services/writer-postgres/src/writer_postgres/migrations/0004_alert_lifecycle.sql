-- stream_alerts becomes the store of the alert lifecycle (AlertEvent on dp.alert.>): one row per
-- alert_id, status open|closed, the first/last violating value and time, the peak and the count.
-- 0003 created the table before the AlertEvent contract existed; it is adapted, not re-created.
ALTER TABLE stream_alerts RENAME COLUMN state TO status;
UPDATE stream_alerts SET status = 'open' WHERE status <> 'closed';
ALTER TABLE stream_alerts
    DROP COLUMN IF EXISTS value,
    ADD COLUMN first_value     double precision,
    ADD COLUMN first_at        timestamptz,
    ADD COLUMN last_value      double precision,
    ADD COLUMN last_at         timestamptz,
    ADD COLUMN peak_value      double precision,
    ADD COLUMN violation_count integer     NOT NULL DEFAULT 0,
    ADD COLUMN last_event      text,                -- opened | escalated | closed (latest applied)
    ADD COLUMN emitted_at      timestamptz,         -- when the classifier emitted that event
    ADD CONSTRAINT stream_alerts_status_check CHECK (status IN ('open', 'closed'));

-- "Which alerts are open now": a partial index holding only the open alerts, so the query
-- reads a handful of index entries however many closed alerts pile up.
DROP INDEX IF EXISTS stream_alerts_open;
CREATE INDEX stream_alerts_open
    ON stream_alerts (domain, source_id, stream_id) WHERE status = 'open';
