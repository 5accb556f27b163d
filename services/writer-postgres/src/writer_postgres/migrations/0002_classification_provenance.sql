-- Which constraint fired and which config revision was applied (ClassifiedPoint.rule,
-- .config_version), plus the legacy IoT ids when a point came through the legacy endpoints.
ALTER TABLE data_points
    ADD COLUMN IF NOT EXISTS rule text,
    ADD COLUMN IF NOT EXISTS config_version bigint,
    ADD COLUMN IF NOT EXISTS legacy jsonb;
