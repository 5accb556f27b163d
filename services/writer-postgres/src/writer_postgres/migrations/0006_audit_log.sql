-- Security audit trail (ISO 27001 A.12.4): AuditEvents from audit.<service>.<action>.
-- Who (key_id: the public id of an API key, never the key), what (event = action, target,
-- reason, details), when (time), from where (client_ip). event_id makes a redelivery one row.

ALTER TABLE ingestion_audit_log
    ADD COLUMN IF NOT EXISTS event_id  text,
    ADD COLUMN IF NOT EXISTS outcome   text,
    ADD COLUMN IF NOT EXISTS key_id    text,
    ADD COLUMN IF NOT EXISTS role      text,
    ADD COLUMN IF NOT EXISTS client_ip text,
    ADD COLUMN IF NOT EXISTS target    text,
    ADD COLUMN IF NOT EXISTS reason    text;

CREATE UNIQUE INDEX IF NOT EXISTS ingestion_audit_log_event_id
    ON ingestion_audit_log (event_id);
CREATE INDEX IF NOT EXISTS ingestion_audit_log_time
    ON ingestion_audit_log (time DESC);
CREATE INDEX IF NOT EXISTS ingestion_audit_log_key_time
    ON ingestion_audit_log (key_id, time DESC) WHERE key_id IS NOT NULL;
