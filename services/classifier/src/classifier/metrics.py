"""Prometheus metrics of the classifier (process-wide, served at ``/metrics``).

Label values are bounded: classes, a handful of DLQ reasons, stages and exception class names.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

RECEIVED_POINTS = Counter("classifier_received_points", "Points received in valid raw batches.")
RECEIVED_MESSAGES = Counter(
    "classifier_received_messages", "Raw messages fetched from DP_RAW (valid or not)."
)
PUBLISHED_POINTS = Counter(
    "classifier_published_points", "Points published (acked by JetStream) by class.", ["cls"]
)
DLQ = Counter(
    "classifier_dlq", "Dead letters published (acked by JetStream), by kind.", ["reason"]
)
MESSAGES_ACKED = Counter(
    "classifier_messages_acked", "Raw messages acknowledged (by a snapshot that covers them)."
)
ERRORS = Counter(
    "classifier_errors", "Failures by stage and exception type.", ["stage", "error_type"]
)
BATCH_SECONDS = Histogram(
    "classifier_batch_seconds",
    "Time to handle one fetched batch of raw messages (parse, classify, publish, ack).",
    buckets=(0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
CONFIGS_LOADED = Gauge("classifier_stream_configs", "Stream configurations held in memory.")
CONFIG_ERRORS = Counter(
    "classifier_stream_config_errors", "Stream-configs entries ignored, by reason.", ["reason"]
)
ALERT_EVENTS = Counter(
    "classifier_alert_events", "Alert events published (acked by JetStream) by kind.", ["event"]
)
CHECKPOINT_WRITES = Counter(
    "classifier_checkpoint_writes", "Checkpoint documents written to classifier-state."
)
SNAPSHOT_SECONDS = Histogram(
    "classifier_snapshot_seconds",
    "One partition snapshot: wait for the outputs, write the documents, ack the inputs.",
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
EVICTED_STREAMS = Counter(
    "classifier_evicted_streams", "Stream states evicted from memory (kept in the bucket)."
)
RESTORED_SOURCES = Counter(
    "classifier_restored_sources", "Evicted sources restored from the bucket on their next point."
)
OVER_CAP_POINTS = Counter(
    "classifier_over_cap_points",
    "Points of new streams of a source at MAX_STREAMS_PER_SOURCE (value rules only, no state).",
)
SKIPPED_BATCHES = Counter(
    "classifier_skipped_batches",
    "Redelivered batches whose points the state already holds (covered by a checkpoint).",
)
STATE_STREAMS = Gauge(
    "classifier_streams", "Streams whose state is held in memory, by partition.", ["partition"]
)
OTHER_PARTITION_MESSAGES = Counter(
    "classifier_other_partition_messages",
    "Former per-source raw messages of another partition's source, acked without output.",
)
SHADOW_BATCHES = Counter(
    "classifier_shadow_batches",
    "ShadowBatches (live and shadow verdicts of canary sources) acked by JetStream.",
)
