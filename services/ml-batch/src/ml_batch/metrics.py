"""Prometheus metrics of ml-batch (bounded labels)."""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RUNS = Counter("ml_batch_runs_total", "Runs of the job, by outcome.", ["outcome"])
STREAMS = Counter("ml_batch_streams_total", "Streams loaded with new points.")
WRITTEN = Counter("ml_batch_predictions_written_total", "Prediction rows inserted.")
PUBLISHED = Counter("ml_batch_predictions_published_total", "Predictions acked on the bus.")
ANOMALIES = Counter("ml_batch_anomalies_total", "Predictions with is_anomaly.")
THRESHOLD_EVENTS = Counter("ml_batch_threshold_events_total", "Forecast limit crossings.")
EXPLANATIONS = Counter("ml_batch_explanations_total", "Explainer outcomes.", ["outcome"])
SQLSERVER_PREDICTIONS = Counter(
    "ml_batch_sqlserver_predictions_total",
    "Rows written to the legacy dbo.predictions (inserted, explained: explanation added).",
    ["outcome"],
)
ERRORS = Counter("ml_batch_errors_total", "Errors by stage.", ["stage", "error_type"])
RUN_SECONDS = Histogram(
    "ml_batch_run_seconds", "Duration of a run.", buckets=(0.1, 0.5, 1, 2, 5, 10, 30, 60, 120)
)
LAST_SUCCESS = Gauge("ml_batch_last_success_timestamp", "Unix time of the last good run.")
