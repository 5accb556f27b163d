"""Prometheus metrics of writer-postgres (module level: registered once per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_RECEIVED = Counter(
    "writer_postgres_messages_received", "Classified batches (messages) fetched."
)
MESSAGES_ACKED = Counter(
    "writer_postgres_messages_acked",
    "Messages of every consume loop acknowledged (stored, skipped or dead-lettered).",
)
MESSAGES_NAKKED = Counter(
    "writer_postgres_messages_nakked",
    "Messages of every consume loop nakked for redelivery after a transient error.",
)
MESSAGES_SKIPPED = Counter(
    "writer_postgres_messages_skipped", "Messages of a domain SINK_ROUTES gives another writer."
)
POINTS_WRITTEN = Counter("writer_postgres_points_written", "Points inserted into data_points.")
POINTS_DUPLICATE = Counter(
    "writer_postgres_points_duplicate", "Points skipped because they were already stored."
)
DLQ = Counter(
    "writer_postgres_dlq", "Dead letters published (every consume loop), by kind.", ["reason"]
)
ERRORS = Counter(
    "writer_postgres_errors", "Errors handled, by stage and error type.", ["stage", "error_type"]
)
COMMIT_SECONDS = Histogram(
    "writer_postgres_commit_seconds", "Duration of one write transaction (COPY + INSERT + commit).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ROWS_PER_COMMIT = Histogram(
    "writer_postgres_rows_per_commit", "Rows sent in one write transaction.",
    buckets=(1, 10, 50, 100, 500, 1000, 5000, 10_000, 25_000, 50_000, 100_000, 250_000),
)
ALERT_EVENTS_RECEIVED = Counter(
    "writer_postgres_alert_events_received", "Alert lifecycle events (messages) fetched."
)
ALERT_EVENTS_APPLIED = Counter(
    "writer_postgres_alert_events_applied",
    "Alert events that inserted or moved a stream_alerts row.",
)
ALERT_EVENTS_UNCHANGED = Counter(
    "writer_postgres_alert_events_unchanged",
    "Alert events that changed nothing (redelivered, duplicated, or older than the row).",
)
CIRCUIT_OPEN = Gauge(
    "writer_postgres_circuit_open",
    "1 while PostgreSQL is unreachable and fetching is paused (circuit breaker open), else 0.",
)
CIRCUIT_OPENED = Counter(
    "writer_postgres_circuit_opened", "Times the circuit breaker opened (PostgreSQL went away)."
)
