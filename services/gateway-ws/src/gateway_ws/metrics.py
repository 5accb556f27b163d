"""Prometheus metrics of the WebSocket gateway (default registry, served by ``/metrics``).

Declared once per process at import, as prometheus_client requires; every label has a bounded
set of values (message types, error codes, close codes, fixed stages and error types).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

SESSIONS_OPEN = Gauge("gateway_ws_sessions_open", "WebSocket sessions currently connected.")
SESSIONS_CLOSED = Counter(
    "gateway_ws_sessions_closed", "Sessions ended, by close code (1006 = peer vanished).", ["code"]
)
BATCHES_IN_FLIGHT = Gauge(
    "gateway_ws_batches_in_flight", "Data messages received whose ack has not been sent yet."
)
READS_PAUSED = Counter(
    "gateway_ws_reads_paused",
    "Times a session owed MAX_UNACKED_BATCHES replies and stopped reading its socket.",
)
MESSAGES = Counter("gateway_ws_messages", "Client messages received, by type.", ["type"])
PROTOCOL_ERRORS = Counter("gateway_ws_protocol_errors", "error replies sent, by code.", ["code"])
POINTS_RECEIVED = Counter(
    "gateway_ws_points_received", "Data points in data messages of connected sessions."
)
POINTS_PUBLISHED = Counter(
    "gateway_ws_points_published", "Data points acknowledged by JetStream on dp.raw."
)
POINTS_REJECTED = Counter(
    "gateway_ws_points_rejected",
    "Data points refused, by the field of their first problem.",
    ["reason"],
)
ERRORS = Counter(
    "gateway_ws_errors",
    "Failures on our side, by stage (auth, publish, publish_rejected, resume_write, session) "
    "and error type.",
    ["stage", "error_type"],
)
ACK_LATENCY = Histogram(
    "gateway_ws_ack_latency_seconds",
    "Time from receiving a data message to sending its ack (after every PubAck).",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BUNDLE_POINTS = Histogram(
    "gateway_ws_bundle_points",
    "Points per PointBundle published on dp.raw.<domain>.part.<p>.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
