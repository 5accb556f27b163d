-- Seed 003's example queries for a mixed-format firmware rollout, on the read-time view
-- data_points_unified (migration 0009). Parameters: $1 = domain, $2 = stream_id, $3 = since
-- (timestamptz). Each query starts at a "-- name:" line; tests run every one of them.

-- name: legacy_vs_new_counts
-- Points per raw unit (legacy firmware 'ticks' vs new 'mm'), with their sources and time span.
SELECT unit_raw, count(*) AS points, count(DISTINCT source_id) AS sources,
       min(time) AS first_time, max(time) AS last_time
FROM data_points_unified
WHERE domain = $1 AND stream_id = $2 AND time >= $3
GROUP BY unit_raw
ORDER BY unit_raw NULLS LAST;

-- name: sources_with_both_formats
-- Sources that sent the stream in more than one raw unit (mid-rollout devices).
SELECT source_id, array_agg(DISTINCT unit_raw ORDER BY unit_raw) AS units,
       count(*) AS points, max(time) AS last_time
FROM data_points_unified
WHERE domain = $1 AND stream_id = $2 AND time >= $3
GROUP BY source_id
HAVING count(DISTINCT unit_raw) > 1
ORDER BY source_id;

-- name: unified_recent_rows
-- The latest points, raw and unified side by side (ticks → mm by the calibration in force).
SELECT time, source_id, value_raw, unit_raw, value, unit, calibration_id, transport
FROM data_points_unified
WHERE domain = $1 AND stream_id = $2 AND time >= $3
ORDER BY time DESC, source_id
LIMIT 50;

-- name: left_right_switches
-- Sign changes of the unified value per source (left < 0 < right), with the latest switch.
SELECT source_id, count(*) AS switches, max(time) AS last_switch,
       count(*) FILTER (WHERE value > 0) AS to_right, count(*) FILTER (WHERE value < 0) AS to_left
FROM (
    SELECT source_id, time, value,
           lag(value) OVER (PARTITION BY source_id ORDER BY time) AS previous
    FROM data_points_unified
    WHERE domain = $1 AND stream_id = $2 AND time >= $3 AND value <> 0
) s
WHERE sign(value) <> sign(previous)
GROUP BY source_id
ORDER BY source_id;
