"""Prometheus metrics of the CSV importer (default registry, served by ``/metrics``).

Every label has a bounded set of values (job outcomes, fixed stages and error types, the
fields of rejected cells).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge

ROWS_RECEIVED = Counter("csv_importer_rows_received", "CSV rows read from uploaded files.")
POINTS_PUBLISHED = Counter(
    "csv_importer_points_published", "Data points acknowledged by JetStream on dp.raw."
)
POINTS_REJECTED = Counter(
    "csv_importer_points_rejected",
    "Data points not published because of a bad row or cell, by what was bad.",
    ["reason"],
)
UPLOADS = Counter("csv_importer_uploads", "POST /ingest/csv replies by HTTP status.", ["status"])
JOBS_FINISHED = Counter("csv_importer_jobs_finished", "Jobs that ended, by status.", ["status"])
JOBS_RESUMED = Counter("csv_importer_jobs_resumed", "Unfinished jobs picked up at start.")
BUDGET_WAIT = Counter(
    "csv_importer_budget_wait_seconds",
    "Seconds jobs waited for their sources' live/backfill point budgets (rate limits).",
)
JOBS_RUNNING = Gauge("csv_importer_jobs_running", "Jobs being processed now.")
ERRORS = Counter(
    "csv_importer_errors",
    "Failures on our side, by stage (auth, upload, jobs, publish, job) and error type.",
    ["stage", "error_type"],
)
