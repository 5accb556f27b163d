-- Tables other parts of the fleet fill (alerts, gateway rejects, ml-batch output, audit trail).

CREATE TABLE IF NOT EXISTS stream_alerts (
    id              bigserial PRIMARY KEY,
    alert_id        text        NOT NULL UNIQUE,   -- stable id of the alert across its events
    domain          text        NOT NULL,
    source_id       text        NOT NULL,
    stream_id       text        NOT NULL,
    severity        text        NOT NULL,          -- warning | critical | anomaly
    state           text        NOT NULL,          -- open | escalated | closed
    rule            text,
    reason          text,
    value           double precision,
    config_version  bigint,
    opened_at       timestamptz NOT NULL,
    updated_at      timestamptz NOT NULL DEFAULT now(),
    closed_at       timestamptz,
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS stream_alerts_stream_time
    ON stream_alerts (domain, source_id, stream_id, opened_at DESC);
CREATE INDEX IF NOT EXISTS stream_alerts_open
    ON stream_alerts (domain, severity) WHERE state <> 'closed';

CREATE TABLE IF NOT EXISTS ingest_rejects (
    id              bigserial PRIMARY KEY,
    time            timestamptz NOT NULL,          -- when the input was refused
    transport       text        NOT NULL,
    domain          text,
    source_id       text,
    stream_id       text,
    reason          text        NOT NULL,
    payload_excerpt text
);
CREATE INDEX IF NOT EXISTS ingest_rejects_stream_time
    ON ingest_rejects (domain, source_id, stream_id, time DESC);

CREATE TABLE IF NOT EXISTS predictions (
    time            timestamptz NOT NULL,          -- the instant predicted
    domain          text        NOT NULL,
    source_id       text        NOT NULL,
    stream_id       text        NOT NULL,
    model           text        NOT NULL,
    predicted_value double precision,
    lower_bound     double precision,
    upper_bound     double precision,
    anomaly_score   double precision,
    computed_at     timestamptz NOT NULL DEFAULT now(),
    metadata        jsonb       NOT NULL DEFAULT '{}'::jsonb,
    CONSTRAINT predictions_key UNIQUE (domain, source_id, stream_id, model, time)
);
CREATE INDEX IF NOT EXISTS predictions_stream_time
    ON predictions (domain, source_id, stream_id, time DESC);

CREATE TABLE IF NOT EXISTS ingestion_audit_log (
    id              bigserial PRIMARY KEY,
    time            timestamptz NOT NULL DEFAULT now(),
    service         text        NOT NULL,
    event           text        NOT NULL,          -- e.g. csv_job_completed, config_changed
    domain          text,
    source_id       text,
    stream_id       text,
    points          integer,
    details         jsonb       NOT NULL DEFAULT '{}'::jsonb
);
CREATE INDEX IF NOT EXISTS ingestion_audit_log_stream_time
    ON ingestion_audit_log (domain, source_id, stream_id, time DESC);
