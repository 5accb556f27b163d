-- Units and calibration as data (seed 003): raw values are never rewritten; read-time views give
-- the unified series. Additive only.
--
-- Unit of a stored point, first found: the point's own metadata->>'unit' (a firmware that says
-- what it sends), else the most specific stream_units row whose interval holds the point's time
-- (the source's own row before the domain-wide '*' row; the latest valid_from first).
CREATE TABLE IF NOT EXISTS stream_units (
    domain      text        NOT NULL,
    source_id   text        NOT NULL DEFAULT '*',        -- '*' = every source of the domain
    stream_id   text        NOT NULL,
    unit        text        NOT NULL,
    valid_from  timestamptz NOT NULL DEFAULT '-infinity',
    valid_to    timestamptz NOT NULL DEFAULT 'infinity',
    note        text,
    created_at  timestamptz NOT NULL DEFAULT now(),
    PRIMARY KEY (domain, source_id, stream_id, valid_from),
    CONSTRAINT stream_units_interval CHECK (valid_from < valid_to)
);

-- Conversion of a unit into another, per source (device) or domain-wide ('*'), per stream or
-- every stream ('*'), valid over [valid_from, valid_to): value × scale + "offset".
-- The seed's global 20:1 rule is one row: ('machines', '*', 'platform_extension', 'ticks', 'mm',
-- 0.05, 0); a device's own calibration is a row with its source_id and wins over the '*' row.
CREATE TABLE IF NOT EXISTS calibrations (
    id          bigserial PRIMARY KEY,
    domain      text             NOT NULL,
    source_id   text             NOT NULL DEFAULT '*',
    stream_id   text             NOT NULL DEFAULT '*',
    from_unit   text             NOT NULL,
    to_unit     text             NOT NULL,
    scale       double precision NOT NULL DEFAULT 1,
    "offset"    double precision NOT NULL DEFAULT 0,
    valid_from  timestamptz      NOT NULL DEFAULT '-infinity',
    valid_to    timestamptz      NOT NULL DEFAULT 'infinity',
    note        text,
    created_at  timestamptz      NOT NULL DEFAULT now(),
    CONSTRAINT calibrations_interval CHECK (valid_from < valid_to),
    CONSTRAINT calibrations_finite CHECK (scale <> 'NaN' AND "offset" <> 'NaN'
        AND abs(scale) < 'infinity' AND abs("offset") < 'infinity')
);
CREATE INDEX IF NOT EXISTS calibrations_lookup
    ON calibrations (domain, stream_id, from_unit, source_id);

-- Every stored point with its raw unit and its unified value/unit (raw when no calibration
-- applies). value_raw is the stored value, untouched.
CREATE OR REPLACE VIEW data_points_unified AS
SELECT d.time, d.domain, d.source_id, d.stream_id,
       d.value                                   AS value_raw,
       u.unit                                    AS unit_raw,
       CASE WHEN c.id IS NULL THEN d.value ELSE d.value * c.scale + c."offset" END AS value,
       COALESCE(c.to_unit, u.unit)               AS unit,
       c.id                                      AS calibration_id,
       d.cls, d.reason, d.stream_type, d.transport, d.received_at, d.metadata
FROM data_points d
LEFT JOIN LATERAL (
    SELECT COALESCE(
        d.metadata ->> 'unit',
        (SELECT su.unit FROM stream_units su
         WHERE su.domain = d.domain AND su.stream_id = d.stream_id
           AND su.source_id IN (d.source_id, '*')
           AND d.time >= su.valid_from AND d.time < su.valid_to
         ORDER BY su.source_id = '*', su.valid_from DESC
         LIMIT 1)
    ) AS unit
) u ON true
LEFT JOIN LATERAL (
    SELECT cal.id, cal.scale, cal."offset", cal.to_unit FROM calibrations cal
    WHERE cal.domain = d.domain AND cal.from_unit = u.unit
      AND cal.source_id IN (d.source_id, '*') AND cal.stream_id IN (d.stream_id, '*')
      AND d.time >= cal.valid_from AND d.time < cal.valid_to
    ORDER BY cal.source_id = '*', cal.stream_id = '*', cal.valid_from DESC, cal.id DESC
    LIMIT 1
) c ON true;

COMMENT ON VIEW data_points_unified IS
    'data_points with unit_raw (metadata unit, else stream_units) and value/unit after the most '
    'specific calibration valid at the point''s time; value_raw is the stored value';
