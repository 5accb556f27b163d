"""Prometheus metrics of the MQTT gateway (default registry, served by ``/metrics``).

Declared once per process at import; every label has a bounded set of values (rejection codes
of ``normalize.REJECTION_CODES``, fixed stages and error types).
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

MESSAGES_RECEIVED = Counter(
    "gateway_mqtt_messages_received", "MQTT messages received (accepted or rejected)."
)
POINTS_PUBLISHED = Counter(
    "gateway_mqtt_points_published", "Data points acknowledged by JetStream on dp.raw."
)
MESSAGES_REJECTED = Counter(
    "gateway_mqtt_messages_rejected", "MQTT messages refused, by reason code.", ["reason"]
)
MESSAGES_ACKED = Counter(
    "gateway_mqtt_messages_acked", "QoS 1 messages acknowledged to the broker (PUBACK sent)."
)
REDELIVERIES = Counter(
    "gateway_mqtt_redeliveries", "Messages the broker delivered again (DUP flag set)."
)
ERRORS = Counter(
    "gateway_mqtt_errors",
    "Failures on our side, by stage (connect, subscribe, publish, publish_rejected) and type.",
    ["stage", "error_type"],
)
IN_FLIGHT = Gauge(
    "gateway_mqtt_in_flight", "QoS 1 messages received and not yet acknowledged to the broker."
)
CONNECTED = Gauge("gateway_mqtt_broker_connected", "1 while connected to the MQTT broker.")
CONNECTS = Counter("gateway_mqtt_connects", "Successful connections to the broker.")
ACK_LATENCY = Histogram(
    "gateway_mqtt_publish_ack_seconds",
    "Time from handing a message to the coalescer to its bundle's JetStream PubAck.",
    buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0),
)
BUNDLE_POINTS = Histogram(
    "gateway_mqtt_bundle_points",
    "Points per PointBundle published on dp.raw.<domain>.part.<p>.",
    buckets=(1, 2, 5, 10, 20, 50, 100, 200, 500, 1000, 2000),
)
