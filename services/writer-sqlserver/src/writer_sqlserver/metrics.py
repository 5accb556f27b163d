"""Prometheus metrics of writer-sqlserver (module level: registered once per process)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_RECEIVED = Counter(
    "writer_sqlserver_messages_received", "Classified batches (messages) fetched."
)
MESSAGES_ACKED = Counter(
    "writer_sqlserver_messages_acked", "Messages acknowledged (stored, skipped or dead-lettered)."
)
MESSAGES_NAKKED = Counter(
    "writer_sqlserver_messages_nakked", "Messages nakked for redelivery after a transient error."
)
MESSAGES_SKIPPED = Counter(
    "writer_sqlserver_messages_skipped", "Messages of a domain SINK_ROUTES gives another writer."
)
ROWS_SENT = Counter(
    "writer_sqlserver_rows_sent",
    "Rows sent per legacy table (readings: attempted, duplicates skipped by the database).",
    ["table"],
)
DLQ = Counter(
    "writer_sqlserver_dlq", "Messages published to the dead-letter subject, by reason.", ["reason"]
)
ERRORS = Counter(
    "writer_sqlserver_errors", "Errors handled, by stage and error type.", ["stage", "error_type"]
)
CIRCUIT_OPEN = Gauge(
    "writer_sqlserver_circuit_open",
    "1 while SQL Server is unreachable and fetching is paused (circuit breaker open), else 0.",
)
CIRCUIT_OPENED = Counter(
    "writer_sqlserver_circuit_opened", "Times the circuit breaker opened (SQL Server went away)."
)
COMMIT_SECONDS = Histogram(
    "writer_sqlserver_commit_seconds", "Duration of one write transaction (statements + commit).",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30),
)
ROWS_PER_COMMIT = Histogram(
    "writer_sqlserver_readings_per_commit", "Readings sent in one write transaction.",
    buckets=(1, 10, 50, 100, 500, 1000, 5000, 10_000, 32_000),
)
