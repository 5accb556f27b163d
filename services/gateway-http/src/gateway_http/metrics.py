"""Prometheus metrics of the HTTP gateway (default registry, served by ``/metrics``).

Declared once per process at import, as prometheus_client requires; every label has a bounded
set of values (status codes, field names of rejections, fixed stages and error types).
"""

from __future__ import annotations

from typing import Any

from prometheus_client import Counter, Histogram

POINTS_RECEIVED = Counter(
    "gateway_http_points_received",
    "Data points in authenticated /ingest/data requests whose envelope was valid.",
)
POINTS_PUBLISHED = Counter(
    "gateway_http_points_published", "Data points acknowledged by JetStream on dp.raw."
)
POINTS_REJECTED = Counter(
    "gateway_http_points_rejected",
    "Data points refused, by the field of their first problem.",
    ["reason"],
)
REQUESTS = Counter("gateway_http_requests", "/ingest/data replies by HTTP status.", ["status"])
CONFIG_REQUESTS = Counter(
    "gateway_http_config_requests",
    "/streams/…/config replies by method and HTTP status.",
    ["method", "status"],
)
ERRORS = Counter(
    "gateway_http_errors",
    "Failures on our side, by stage (auth, publish, publish_rejected, config, keys, registry, "
    "status, provision, ledger, switches, handler, startup) and error type.",
    ["stage", "error_type"],
)
ACK_LATENCY = Histogram(
    "gateway_http_publish_ack_seconds",
    "Time from the first publish of a request to the last JetStream PubAck.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BUNDLE_POINTS = Histogram(
    "gateway_http_bundle_points",
    "Points per PointBundle published on dp.raw.<domain>.part.<p>.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)

_REPLIES: dict[int, Any] = {}


def count_reply(status: int) -> None:
    """``REQUESTS`` by status, with the labelled child bound once per status."""
    child = _REPLIES.get(status)
    if child is None:
        child = _REPLIES[status] = REQUESTS.labels(str(status))
    child.inc()
