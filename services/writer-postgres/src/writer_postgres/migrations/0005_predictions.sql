-- predictions becomes ml-batch's output: one row per (stream, model, as_of), where as_of is the
-- event time of the latest point the job used (re-running over the same points inserts nothing).
-- 0003 keyed the table by the predicted instant; that key is replaced, the table is adapted.
ALTER TABLE predictions
    ADD COLUMN as_of            timestamptz,
    ADD COLUMN stream_type      text,
    ADD COLUMN points_used      integer,
    ADD COLUMN horizon_seconds  double precision,
    ADD COLUMN step_seconds     double precision,    -- forecast step (median sampling interval)
    ADD COLUMN forecast_values  double precision[],  -- value i at as_of + (i+1) × step_seconds
    ADD COLUMN is_anomaly       boolean NOT NULL DEFAULT false,
    ADD COLUMN threshold_events jsonb   NOT NULL DEFAULT '[]'::jsonb,  -- ThresholdCrossing list
    ADD COLUMN explanation      jsonb,               -- {source: builtin|ai-explainer, text, …}
    ADD COLUMN explain_attempts integer NOT NULL DEFAULT 0,
    ADD COLUMN published_at     timestamptz;         -- NULL until dp.prediction.> acked it
UPDATE predictions SET as_of = time WHERE as_of IS NULL;
ALTER TABLE predictions
    ALTER COLUMN as_of SET NOT NULL,
    DROP CONSTRAINT IF EXISTS predictions_key,
    ADD CONSTRAINT predictions_key UNIQUE (domain, source_id, stream_id, model, as_of);
COMMENT ON COLUMN predictions.time IS 'instant of predicted_value: as_of + horizon';

-- What is still to publish (outbox) and which anomalies still wait for an AI explanation.
CREATE INDEX IF NOT EXISTS predictions_unpublished
    ON predictions (computed_at) WHERE published_at IS NULL;
CREATE INDEX IF NOT EXISTS predictions_unexplained
    ON predictions (anomaly_score DESC) WHERE is_anomaly AND explanation IS NULL;

-- Per stream: event time of the latest point ml-batch has handled. A stream is looked at again
-- only once it has a newer point.
CREATE TABLE IF NOT EXISTS prediction_watermarks (
    domain      text        NOT NULL,
    source_id   text        NOT NULL,
    stream_id   text        NOT NULL,
    last_time   timestamptz NOT NULL,
    updated_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (domain, source_id, stream_id)
);
