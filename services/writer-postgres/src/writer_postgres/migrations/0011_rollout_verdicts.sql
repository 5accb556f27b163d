-- Canary rollouts: both verdicts of every point of a canary source (ShadowBatch on dp.shadow.>),
-- and the comparison the `tributary rollout report` reads. Additive only.
CREATE TABLE IF NOT EXISTS rollout_verdicts (
    rollout        text             NOT NULL,
    revision       bigint           NOT NULL,     -- KV revision of the rollout entry in force
    state          text             NOT NULL,     -- shadow (live decided) | promoted (candidate)
    time           timestamptz      NOT NULL,
    domain         text             NOT NULL,
    source_id      text             NOT NULL,
    stream_id      text             NOT NULL,
    stream_type    text,
    value          double precision NOT NULL,
    live_cls       text             NOT NULL,     -- the class stored in data_points
    live_rule      text             NOT NULL,
    live_version   bigint,
    shadow_cls     text             NOT NULL,
    shadow_rule    text             NOT NULL,
    shadow_reason  text             NOT NULL,
    shadow_version bigint,
    classified_at  timestamptz      NOT NULL,
    CONSTRAINT rollout_verdicts_key UNIQUE (rollout, revision, domain, source_id, stream_id, time)
);
CREATE INDEX IF NOT EXISTS rollout_verdicts_rollout_time ON rollout_verdicts (rollout, time DESC);

-- Per rollout and stream type: how often the two configs agree, in whichever state.
CREATE OR REPLACE VIEW rollout_comparison AS
SELECT rollout, state, COALESCE(stream_type, stream_id) AS stream_type,
       count(*)                                        AS points,
       count(*) FILTER (WHERE live_cls = shadow_cls)   AS agree,
       count(*) FILTER (WHERE live_cls <> shadow_cls)  AS disagree,
       round(100.0 * count(*) FILTER (WHERE live_cls = shadow_cls) / count(*), 2) AS agreement_pct,
       count(DISTINCT source_id)                       AS sources,
       min(time) AS first_time, max(time) AS last_time
FROM rollout_verdicts
GROUP BY rollout, state, COALESCE(stream_type, stream_id);
