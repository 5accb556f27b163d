"""The console's Prometheus metrics (``/metrics``)."""

from __future__ import annotations

from prometheus_client import Counter

REQUESTS = Counter(
    "console_requests",
    "Replies of the query API and the pages by endpoint (a fixed set of names) and HTTP status.",
    ["endpoint", "status"],
)
ERRORS = Counter(
    "console_errors",
    "Unexpected errors by stage (endpoint) and error type.",
    ["stage", "error_type"],
)
