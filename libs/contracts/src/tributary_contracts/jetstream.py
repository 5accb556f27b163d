"""JetStream streams, KV buckets and durable consumers, declared once for every service.

``ensure_jetstream(js, ns)`` creates what is missing and brings existing streams to the declared
config; it is idempotent and safe to call from every service at start. The definitions are plain
keyword arguments of nats-py's ``add_stream``/``create_key_value``/``add_consumer`` so this package
depends on pydantic only. Everything here stays compatible with nats-server 2.9: one
``filter_subject`` per consumer, no per-message TTL.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

from tributary_contracts.subjects import Namespace

DAY = 24 * 3600.0
DUPLICATE_WINDOW_SECONDS = 120.0
"""Bus-level dedup window: a retry with the same ``Nats-Msg-Id`` inside it is dropped."""

# Stream names (before the namespace prefix).
DP_RAW = "DP_RAW"
DP_CLASSIFIED = "DP_CLASSIFIED"
DP_EVENTS = "DP_EVENTS"
DP_REJECTED = "DP_REJECTED"
DP_DLQ = "DP_DLQ"
AUDIT = "AUDIT"

# KV bucket names (before the namespace prefix).
STREAM_CONFIGS_BUCKET = "stream-configs"
API_KEYS_BUCKET = "api-keys"
CSV_JOBS_BUCKET = "csv-jobs"
CLASSIFIER_STATE_BUCKET = "classifier-state"
WS_RESUME_BUCKET = "ws-resume"
DEVICES_BUCKET = "iot-devices"
PROVISION_NONCES_BUCKET = "provision-nonces"
PROVISION_NONCE_TTL_SECONDS = 3600.0
"""How long a provisioning nonce is remembered: at least twice the largest timestamp window
gateway-http accepts (``PROVISIONING_WINDOW_SECONDS`` ≤ 1800), so a signed request is refused as
a replay for as long as its timestamp can still pass the window check."""

# Durable consumer names (scoped by their stream, so not prefixed).
CLASSIFIER_DURABLE = "classifier"
"""The classifier's name as a consumer (DLQ subject ``dp.dlq.classifier``) and the former
durable of per-source subjects (filter ``dp.raw.>``): no longer created, only read as the place
a drain starts from (``classifier_drain_consumer``). The classifier reads through
``classifier_partition_consumer(p)``."""
WRITER_POSTGRES_DURABLE = "writer-postgres"
WRITER_SQLSERVER_DURABLE = "writer-sqlserver"
WRITER_POSTGRES_ALERTS_DURABLE = "writer-postgres-alerts"
WRITER_POSTGRES_AUDIT_DURABLE = "writer-postgres-audit"

MAX_DELIVER = 10
"""Deliveries of one message before its consumer sends it to ``dp.dlq.<consumer>``."""


@dataclass(frozen=True)
class StreamDef:
    """One stream: base name, subject pattern builder, retention."""

    base: str
    subjects: tuple[str, ...]  # patterns relative to the namespace, e.g. "dp.raw.>"
    max_age_seconds: float
    description: str
    # "new": once an operator-set limit (max_bytes / max_msgs) is reached, publishes are refused
    # (gateways answer 503) instead of old messages being dropped — for the streams holding
    # points on their way to storage, dropping the oldest would lose acknowledged points.
    discard: str = "old"

    def kwargs(self, ns: Namespace) -> dict[str, Any]:
        prefix = f"{ns.prefix}." if ns.prefix else ""
        return {
            "name": ns.stream(self.base),
            "description": self.description,
            "subjects": [prefix + s for s in self.subjects],
            "retention": "limits",
            "storage": "file",
            "discard": self.discard,
            "max_age": self.max_age_seconds,
            "max_msg_size": 8 * 1024 * 1024,
            "duplicate_window": DUPLICATE_WINDOW_SECONDS,
        }


OPERATOR_LIMITS = ("max_bytes", "max_msgs")
"""Stream limits an operator may set (``nats stream edit``); ``ensure_jetstream`` keeps them."""

STREAMS: tuple[StreamDef, ...] = (
    StreamDef(DP_RAW, ("dp.raw.>",), 7 * DAY, "Normalised, unclassified point batches.", "new"),
    StreamDef(DP_CLASSIFIED, ("dp.classified.>",), 7 * DAY, "Classified point batches.", "new"),
    StreamDef(DP_EVENTS, ("dp.alert.>", "dp.prediction.>"), 30 * DAY, "Alerts and predictions."),
    StreamDef(DP_REJECTED, ("dp.rejected.>",), 7 * DAY, "Input a gateway could not accept."),
    StreamDef(DP_DLQ, ("dp.dlq.>",), 30 * DAY, "Messages a consumer gave up on."),
    StreamDef(AUDIT, ("audit.>",), 90 * DAY, "Security audit events (AuditEvent)."),
)

BUCKETS: tuple[tuple[str, int, str], ...] = (
    (STREAM_CONFIGS_BUCKET, 16, "Classification config per stream (StreamConfig JSON)."),
    (API_KEYS_BUCKET, 1, "API keys by id: SHA-256 of the key, role, scope, status."),
    (CSV_JOBS_BUCKET, 1, "CSV import job status."),
    (CLASSIFIER_STATE_BUCKET, 1, "Per-stream last value and alert state checkpoints."),
    (WS_RESUME_BUCKET, 1, "gateway-ws: last durably accepted sequence per (domain, source)."),
    # Keys: ``device.<uuid>`` → the device (serial, SHA-256 of its key, enabled, its sensors);
    # ``sensor.<sensor_id>`` and ``sensor-uuid.<uuid>`` → which device owns that sensor (the
    # indexes the legacy IoT endpoints and topic resolve through); ``serial.<serial>`` → device
    # uuid (``POST /devices/provision`` looks serials up by it). Written by ``tributary devices``
    # and gateway-http provisioning; models in ``tributary_runtime.devices``.
    (DEVICES_BUCKET, 1, "IoT device registry: devices, their keys (hashed) and sensors."),
    # Keys: ``nonce.<nonce>`` of every accepted ``POST /devices/provision``, written create-only
    # (atomic replay detection across gateway replicas); entries expire after the bucket TTL.
    (PROVISION_NONCES_BUCKET, 1, "gateway-http: provisioning nonces already used (TTL 1 h)."),
)

BUCKET_TTLS: dict[str, float] = {PROVISION_NONCES_BUCKET: PROVISION_NONCE_TTL_SECONDS}
"""Buckets whose entries expire (seconds); the others keep their entries."""


@dataclass(frozen=True)
class ConsumerDef:
    """A durable pull consumer: which stream, which subjects, how redelivery works."""

    durable: str
    stream_base: str
    filter_pattern: str  # relative to the namespace
    ack_wait_seconds: float = 30.0
    max_ack_pending: int = 20_000

    def stream_name(self, ns: Namespace) -> str:
        return ns.stream(self.stream_base)

    def filter_subject(self, ns: Namespace) -> str:
        return f"{ns.prefix}.{self.filter_pattern}" if ns.prefix else self.filter_pattern

    def kwargs(self, ns: Namespace) -> dict[str, Any]:
        return {
            "durable_name": self.durable,
            "filter_subject": self.filter_subject(ns),
            "ack_policy": "explicit",
            "deliver_policy": "all",
            "ack_wait": self.ack_wait_seconds,
            # The consumer itself moves a message to the DLQ at MAX_DELIVER; the server limit
            # is a backstop well above it so the server never drops a message silently first.
            "max_deliver": MAX_DELIVER * 2,
            "max_ack_pending": self.max_ack_pending,
        }


CONSUMERS: dict[str, ConsumerDef] = {
    WRITER_POSTGRES_DURABLE: ConsumerDef(WRITER_POSTGRES_DURABLE, DP_CLASSIFIED, "dp.classified.>"),
    WRITER_SQLSERVER_DURABLE: ConsumerDef(
        WRITER_SQLSERVER_DURABLE, DP_CLASSIFIED, "dp.classified.>"
    ),
    WRITER_POSTGRES_ALERTS_DURABLE: ConsumerDef(
        WRITER_POSTGRES_ALERTS_DURABLE, DP_EVENTS, "dp.alert.>"
    ),
    WRITER_POSTGRES_AUDIT_DURABLE: ConsumerDef(WRITER_POSTGRES_AUDIT_DURABLE, AUDIT, "audit.>"),
}


def classifier_partition_durable(partition: int) -> str:
    """Durable consumer of the classifier that owns bus partition ``partition``. Named by the
    partition, not by the replica, so any replica can take a partition over."""
    return f"{CLASSIFIER_DURABLE}-part-{partition}"


def classifier_partition_consumer(partition: int) -> ConsumerDef:
    """``classifier-part-<p>`` on ``DP_RAW``, filter ``dp.raw.*.part.<p>``: reads only the
    bundles of its own partition (server-side filter)."""
    return ConsumerDef(
        classifier_partition_durable(partition),
        DP_RAW,
        f"dp.raw.*.part.{partition}",
    )


def classifier_drain_durable(partition: int) -> str:
    """Durable that drains the former per-source raw subjects for partition ``partition``."""
    return f"{CLASSIFIER_DURABLE}-drain-{partition}"


def classifier_drain_consumer(partition: int) -> ConsumerDef:
    """``classifier-drain-<p>`` on ``DP_RAW``, filter ``dp.raw.*.*``: the former per-source
    subjects (``dp.raw.<domain>.<source>``, exactly four tokens, so never a partition subject)
    during an upgrade. Every partition's drain reads every former message and classifies those
    of its own sources (their subject carries no partition)."""
    return ConsumerDef(classifier_drain_durable(partition), DP_RAW, "dp.raw.*.*")


class JetStreamLike(Protocol):
    """The part of nats-py's ``JetStreamContext`` that ``ensure_jetstream`` uses."""

    async def stream_info(self, name: str) -> Any: ...
    async def add_stream(self, config: Any = None, **params: Any) -> Any: ...
    async def update_stream(self, config: Any = None, **params: Any) -> Any: ...
    async def key_value(self, bucket: str) -> Any: ...
    async def create_key_value(self, config: Any = None, **params: Any) -> Any: ...
    async def consumer_info(self, stream: str, consumer: str) -> Any: ...
    async def add_consumer(self, stream: str, config: Any = None, **params: Any) -> Any: ...


def _is_not_found(exc: Exception) -> bool:
    # nats-py raises NotFoundError / BucketNotFoundError (both carry "not found"), code 404.
    return (
        getattr(exc, "code", None) == 404
        or "not found" in str(exc).lower()
        or type(exc).__name__ in ("NotFoundError", "BucketNotFoundError")
    )


async def ensure_jetstream(
    js: JetStreamLike,
    ns: Namespace = Namespace(),
    consumers: tuple[str, ...] = (),
    replicas: int | None = None,
) -> None:
    """Create or update every stream and bucket of ``ns``, plus the named durable consumers.

    ``replicas`` is the copies each stream and bucket keeps in a NATS cluster (3 in production,
    see deploy/README.md). ``None`` (what services pass at start) creates missing objects with
    one replica and leaves an existing stream's replica count alone, so a service starting after
    ``tributary bootstrap`` never scales an R3 stream back down. Consumers inherit their stream's.

    An existing stream's ``OPERATOR_LIMITS`` (size caps set by an operator) are kept: the
    declared config has none, and an update without them would silently lift the cap again at
    every service start."""
    if replicas is not None and replicas < 1:
        raise ValueError(f"replicas must be >= 1, got {replicas}")
    for stream in STREAMS:
        params = stream.kwargs(ns)
        try:
            info = await js.stream_info(params["name"])
        except Exception as exc:
            if not _is_not_found(exc):
                raise
            await js.add_stream(**params, num_replicas=replicas or 1)
        else:
            for limit in OPERATOR_LIMITS:
                value = getattr(getattr(info, "config", None), limit, None)
                if isinstance(value, int) and value > 0:
                    params[limit] = value
            current = getattr(info.config, "num_replicas", None) or 1
            await js.update_stream(**params, num_replicas=replicas or current)
    for base, history, description in BUCKETS:
        name = ns.bucket(base)
        try:
            await js.key_value(name)
        except Exception as exc:
            if not _is_not_found(exc):
                raise
            ttl = {"ttl": BUCKET_TTLS[base]} if base in BUCKET_TTLS else {}
            await js.create_key_value(
                bucket=name,
                history=history,
                description=description,
                replicas=replicas or 1,
                **ttl,
            )
    for durable in consumers:
        await ensure_consumer(js, ns, durable)


async def ensure_consumer(js: JetStreamLike, ns: Namespace, durable: str) -> None:
    """Create the durable consumer ``durable`` if missing (its config is fixed once created)."""
    definition = CONSUMERS[durable]
    try:
        await js.consumer_info(definition.stream_name(ns), durable)
    except Exception as exc:
        if not _is_not_found(exc):
            raise
        await js.add_consumer(definition.stream_name(ns), **definition.kwargs(ns))
