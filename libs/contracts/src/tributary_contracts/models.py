"""Messages that cross a service boundary on the bus (JSON on the wire, pydantic v2).

The unit of work is a batch of 1..N points from one (domain, source) (``PointBatch``,
``ClassifiedBatch``); on the bus the batches of many sources of one domain and partition travel
together as one bundle (``PointBundle``, ``ClassifiedBundle``): one message per point, request or
source would cap the fleet at a few thousand points/s (Python client cost per JetStream message).
"""

from __future__ import annotations

from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, AwareDatetime, BaseModel, ConfigDict, Field, StringConstraints
from pydantic_core import to_json

MAX_BATCH_POINTS = 500
"""Gateways cut batches of at most this many points."""

MAX_BUNDLE_POINTS = 2000
"""A bundle (``PointBundle``/``ClassifiedBundle``) carries at most this many points in all."""

MAX_METADATA_BYTES = 8 * 1024
"""Largest JSON encoding of one point's ``metadata`` object."""

DOMAIN_PATTERN = r"^[a-z][a-z0-9_-]{0,31}$"

MAX_ID_CHARS = 256
"""Longest source or stream id (characters)."""


def _small_metadata(value: dict[str, Any]) -> dict[str, Any]:
    # Compact JSON size is what the wire and the jsonb column carry.
    if value and len(to_json(value)) > MAX_METADATA_BYTES:
        raise ValueError(f"metadata must encode to at most {MAX_METADATA_BYTES} bytes of JSON")
    return value


Domain = Annotated[str, StringConstraints(pattern=DOMAIN_PATTERN)]
"""A domain name: iot, infrastructure, finance, health, … (lower case, ≤ 32 chars)."""

# Checked by pydantic-core's regex engine (a Python validator per point costs measurable speed).
PRINTABLE_PATTERN = r"^(?:[^\p{C}\p{Z}]| )+$"  # what str.isprintable() accepts

Identifier = Annotated[
    str,
    StringConstraints(min_length=1, max_length=MAX_ID_CHARS, pattern=PRINTABLE_PATTERN),
]
"""A source or stream id: 1–256 printable characters, any of them (escaped in subjects)."""

UtcDatetime = AwareDatetime
"""A timestamp with its UTC offset. Producers of bus messages (the gateways) write UTC; the
offset is required rather than converted so that parsing stays in pydantic-core (a Python
validator per point measurably slowed every hop)."""

FiniteFloat = Annotated[float, Field(allow_inf_nan=False)]
"""A float that is neither NaN nor ±Infinity."""

Metadata = Annotated[dict[str, Any], AfterValidator(_small_metadata)]
"""Free JSON object attached to a point, at most 8 KiB encoded."""


class Transport(StrEnum):
    """How a point reached the fleet."""

    HTTP = "http"
    MQTT = "mqtt"
    WS = "ws"
    CSV = "csv"


class PointClass(StrEnum):
    """The verdict the classifier gives every point."""

    NORMAL = "normal"
    """Inside every configured limit (or the stream has no configuration)."""
    WARNING = "warning"
    """Outside the operational range or inside the warning zone."""
    CRITICAL = "critical"
    """Outside the physical range or inside the critical (alert) zone."""
    ANOMALY = "anomaly"
    """A rate-of-change constraint fired against the stream's previous point."""
    REJECTED = "rejected"
    """The point could not be classified (kept for audit, never silently dropped)."""


class LegacyIds(BaseModel):
    """IoT compatibility identifiers carried by points that came through the legacy endpoints."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    sensor_id: int | None = Field(default=None, description="Legacy integer sensor id.")
    device_uuid: str | None = Field(default=None, description="Owning device's uuid, if known.")
    sensor_uuid: str | None = Field(default=None, description="Legacy sensor uuid, if given.")


class DataPoint(BaseModel):
    """One numeric observation of one stream."""

    model_config = ConfigDict(extra="forbid")

    stream_id: Identifier = Field(
        description="Stream within the source: cpu_usage, BTCUSDT:price, 17."
    )
    value: FiniteFloat = Field(description="The observed value; finite.")
    ts: UtcDatetime = Field(description="Event time in UTC (the gateway fills in receive time).")
    stream_type: Identifier | None = Field(
        default=None, description="Kind of stream (temperature, cpu_usage…); selects defaults."
    )
    sequence: int | None = Field(default=None, description="Producer's sequence number, if any.")
    metadata: Metadata = Field(default_factory=dict, description="Free JSON, ≤ 8 KiB encoded.")
    legacy: LegacyIds | None = Field(default=None, description="IoT compatibility ids.")


class PointBatch(BaseModel):
    """1..500 points from one (domain, source): what a gateway makes of a request or message,
    carried in a ``PointBundle`` (1.x published it alone on ``dp.raw.<domain>.<source>``)."""

    model_config = ConfigDict(extra="forbid")

    domain: Domain = Field(description="Domain of the source: iot, infrastructure, finance, …")
    source_id: Identifier = Field(description="Device, server, exchange, patient… (original id).")
    transport: Transport = Field(description="Gateway the points came through.")
    received_at: UtcDatetime = Field(description="When the gateway received the points (UTC).")
    points: list[DataPoint] = Field(
        min_length=1, max_length=MAX_BATCH_POINTS, description="The points, in input order."
    )


class ClassifiedPoint(DataPoint):
    """A point with the classifier's verdict on it."""

    reason: str = Field(description="Human sentence with the numbers: why this class.")
    rule: str = Field(description="Machine name of the constraint that fired ('none' if normal).")
    config_version: int | None = Field(
        default=None, description="Revision of the StreamConfig applied; None when none applied."
    )


class ClassifiedBatch(BaseModel):
    """Points of one (domain, source) that share one class, carried in a ``ClassifiedBundle``
    (contract 1.x published it alone on ``dp.classified.<domain>.<cls>.<source>``)."""

    model_config = ConfigDict(extra="forbid")

    domain: Domain = Field(description="Domain of the source.")
    source_id: Identifier = Field(description="Original source id.")
    transport: Transport = Field(description="Gateway the points came through.")
    received_at: UtcDatetime = Field(description="When the gateway received the points (UTC).")
    cls: PointClass = Field(description="The class every point of this batch has.")
    classified_at: UtcDatetime = Field(description="When the classifier decided (UTC).")
    points: list[ClassifiedPoint] = Field(
        min_length=1, max_length=MAX_BATCH_POINTS, description="The classified points."
    )


class PointBundle(BaseModel):
    """Point batches of many sources of one domain and one bus partition, coalesced by a gateway
    and published on ``dp.raw.<domain>.part.<partition>``.

    The unit of work is still the ``PointBatch`` of one source: a bundle only shares one bus
    message (one publish, one PubAck, one delivery, one ack) between the batches of many
    requests/messages, so the fleet's cost follows points, not requests. Every batch's source
    hashes to ``partition`` (``partition_of``); batches of one source keep their input order.
    """

    model_config = ConfigDict(extra="forbid")

    domain: Domain = Field(description="Domain of every batch in the bundle.")
    partition: int = Field(ge=0, description="Bus partition every batch's source hashes to.")
    batches: list[PointBatch] = Field(
        min_length=1, description="Per-source batches, ≤ MAX_BUNDLE_POINTS points in all."
    )


class ClassifiedBundle(BaseModel):
    """Classified batches of many sources of one (domain, class, partition), as the classifier
    publishes them on ``dp.classified.<domain>.<cls>.part.<partition>``."""

    model_config = ConfigDict(extra="forbid")

    domain: Domain = Field(description="Domain of every batch in the bundle.")
    cls: PointClass = Field(description="The class every point of every batch has.")
    partition: int = Field(ge=0, description="Bus partition every batch's source hashes to.")
    batches: list[ClassifiedBatch] = Field(
        min_length=1, description="Per-source classified batches."
    )


class RejectedEntry(BaseModel):
    """One input item a gateway refused, and why."""

    model_config = ConfigDict(extra="forbid")

    index: int | None = Field(default=None, description="Position in the request/row/batch.")
    stream_id: str | None = Field(default=None, description="Stream id as sent, if readable.")
    reason: str = Field(description="Human sentence naming the field and the problem.")
    excerpt: str = Field(default="", description="The item as received, truncated.")
    topic: str | None = Field(default=None, description="MQTT topic the item came on, if any")


class RejectedInput(BaseModel):
    """What a gateway publishes on ``dp.rejected.<transport>``: input it could not accept."""

    model_config = ConfigDict(extra="forbid")

    transport: Transport = Field(description="Gateway that refused the input.")
    domain: str | None = Field(default=None, description="Domain as sent, if readable.")
    source_id: str | None = Field(default=None, description="Source id as sent, if readable.")
    received_at: UtcDatetime = Field(description="When the gateway received the input (UTC).")
    rejected: list[RejectedEntry] = Field(min_length=1, description="The refused items.")


class PointRef(BaseModel):
    """The idempotency key of an accepted point within its (domain, source)."""

    model_config = ConfigDict(extra="forbid")

    stream_id: str = Field(description="Stream id of the point.")
    ts: UtcDatetime = Field(description="Event time of the point (UTC).")


class RawRecord(BaseModel):
    """The raw ledger (seed 003's ``raw_record``/``ingest_error``): one input exactly as a gateway
    received it and what came of it, published on ``dp.ledger.<transport>`` for the domains and
    sources an operator opted in (e.g. canary devices). ``Nats-Msg-Id`` is ``record_id``."""

    model_config = ConfigDict(extra="forbid")

    record_id: str = Field(description="sha256 of transport, domain, source, received_at, payload.")
    transport: Transport = Field(description="Gateway that received the input.")
    domain: str = Field(description="Domain as sent.")
    source_id: str = Field(description="Source id as sent.")
    received_at: UtcDatetime = Field(description="When the gateway received the input (UTC).")
    content_type: str | None = Field(default=None, description="Content type, when known.")
    payload_b64: str = Field(description="The input's bytes (base64), up to the gateway's cap.")
    payload_bytes: int = Field(ge=0, description="Size of the whole input in bytes.")
    truncated: bool = Field(default=False, description="payload_b64 holds only the first bytes.")
    status: int | None = Field(default=None, description="Reply status given to the producer.")
    accepted: list[PointRef] = Field(default_factory=list, description="Points published.")
    rejected: list[RejectedEntry] = Field(default_factory=list, description="Points refused.")
    error: str | None = Field(default=None, description="Why the whole input failed, if it did.")


class AlertEventKind(StrEnum):
    """What happened to an alert."""

    OPENED = "opened"
    """N consecutive violating points (``consecutive_violations_required``): an alert opens."""
    ESCALATED = "escalated"
    """A warning alert's stream turned critical: the warning alert closes, a critical one opens
    (the ``escalated`` event carries the new alert; a ``closed`` event is sent for the old)."""
    CLOSED = "closed"
    """The stream recovered (a normal point), or the alert was replaced by an escalation."""


class AlertEvent(BaseModel):
    """An alert lifecycle event, published on ``dp.alert.<domain>.<severity>.<source>``.

    At most one alert is open per stream. ``Nats-Msg-Id`` is ``<alert_id>:<event>`` so a
    redelivered input never publishes the same event twice.
    """

    model_config = ConfigDict(extra="forbid")

    event: AlertEventKind = Field(description="opened, escalated or closed.")
    alert_id: str = Field(description="Stable id of the alert across its events.")
    domain: Domain = Field(description="Domain of the stream.")
    source_id: Identifier = Field(description="Source of the stream (original id).")
    stream_id: Identifier = Field(description="The stream.")
    severity: PointClass = Field(description="warning, critical or anomaly.")
    rule: str = Field(description="Constraint that fired on the violating points.")
    reason: str = Field(description="Human sentence with the numbers (of the last violation).")
    first_value: float = Field(description="Value of the first violating point.")
    first_at: UtcDatetime = Field(description="Event time of the first violating point.")
    last_value: float = Field(description="Value of the latest violating point.")
    last_at: UtcDatetime = Field(description="Event time of the latest violating point.")
    peak_value: float = Field(description="Most extreme violating value seen while open.")
    violation_count: int = Field(ge=1, description="Violating points while open.")
    opened_at: UtcDatetime = Field(description="Event time at which the alert opened.")
    closed_at: UtcDatetime | None = Field(
        default=None, description="Event time of the recovering point (closed events only)."
    )
    config_version: int | None = Field(default=None, description="StreamConfig revision used.")
    emitted_at: UtcDatetime = Field(description="When the classifier emitted the event (UTC).")


class ThresholdCrossing(BaseModel):
    """The forecast crosses one of the stream's configured limits within the horizon."""

    model_config = ConfigDict(extra="forbid")

    level: Literal["warning", "critical"] = Field(description="Zone the forecast enters.")
    limit: str = Field(
        description="StreamConfig limit crossed: warning_max, operational_max, alert_max, "
        "max_value, or their _min counterparts."
    )
    bound: float = Field(description="Value of that limit.")
    direction: Literal["above", "below"] = Field(description="Crossing upwards or downwards.")
    expected_at: UtcDatetime = Field(description="When the forecast reaches the limit (UTC).")
    in_seconds: float = Field(ge=0, description="``expected_at`` minus the prediction's as_of.")


class Prediction(BaseModel):
    """ml-batch's verdict on one stream at one instant (``as_of``, its latest stored point)."""

    model_config = ConfigDict(extra="forbid")

    stream_id: Identifier = Field(description="The stream.")
    stream_type: str | None = Field(default=None, description="Kind of stream, if known.")
    model: str = Field(description="Forecast model used: ewma, trend or taylor.")
    as_of: UtcDatetime = Field(description="Event time of the latest point used (the watermark).")
    points_used: int = Field(ge=1, description="Points of the window the model saw.")
    step_seconds: float = Field(
        gt=0, description="Forecast step: the stream's median sampling interval."
    )
    horizon_seconds: float = Field(ge=0, description="How far ahead the forecast reaches.")
    forecast: list[float] = Field(
        description="The forecast path: value ``i`` is for ``as_of + (i + 1) × step_seconds``."
    )
    lower_bound: float | None = Field(default=None, description="~95 % band low, at horizon end.")
    upper_bound: float | None = Field(default=None, description="~95 % band high, at horizon end.")
    anomaly_score: float = Field(
        ge=0, description="Robust z-score (median/MAD) of the latest points' residuals."
    )
    is_anomaly: bool = Field(description="``anomaly_score`` reached the job's threshold.")
    threshold_events: list[ThresholdCrossing] = Field(
        default_factory=list, description="Limits the forecast crosses within the horizon."
    )
    explanation: dict[str, Any] | None = Field(
        default=None,
        description="Why it is an anomaly: {source: builtin|ai-explainer, text, …}; None when "
        "not an anomaly or when the AI explanation is still pending (see the predictions table).",
    )


class PredictionBatch(BaseModel):
    """Predictions of streams of one (domain, source), published on ``dp.prediction.>``.

    ``Nats-Msg-Id`` is ``prediction_msg_id`` of its (stream, model, as_of) keys, so a re-run
    that publishes the same predictions again is dropped by JetStream's duplicate window.
    """

    model_config = ConfigDict(extra="forbid")

    domain: Domain = Field(description="Domain of the source.")
    source_id: Identifier = Field(description="Original source id.")
    computed_at: UtcDatetime = Field(description="When ml-batch computed them (UTC).")
    predictions: list[Prediction] = Field(min_length=1, description="One per stream.")


AUDIT_ACTION_PATTERN = r"^[a-z][a-z0-9_]{0,47}$"
AUDIT_SERVICE_PATTERN = r"^[a-z][a-z0-9-]{0,47}$"


class AuditAction(StrEnum):
    """What an audit event records (the ``<action>`` token of ``audit.<service>.<action>``)."""

    AUTH_FAILED = "auth_failed"
    """A request with a missing, malformed, unknown, revoked or expired API key (401)."""
    ACCESS_DENIED = "access_denied"
    """A known key asked for something outside its role or scope (403)."""
    KEY_CREATED = "key_created"
    KEY_REVOKED = "key_revoked"
    KEY_ROTATED = "key_rotated"
    CONFIG_CHANGED = "config_changed"
    CONFIG_DELETED = "config_deleted"
    DEVICE_PROVISIONED = "device_provisioned"
    """``POST /devices/provision`` created a device (key issued) or confirmed an existing one."""
    PROVISION_FAILED = "provision_failed"
    """A provisioning request refused: bad signature, timestamp outside the window, replayed
    nonce, or provisioning not configured."""
    KEY_IMPORTED = "key_imported"
    """``tributary keys import`` stored a legacy key record (its SHA-256, role and scopes)."""
    DEVICE_UNAUTHENTICATED = "device_unauthenticated"
    """``DEVICE_AUTH_MODE=migration`` accepted packets without ``X-Device-Key`` from a registered
    device (one event per device per ``DEVICE_AUTH_AUDIT_SECONDS``, with the count since)."""


class AuditEvent(BaseModel):
    """One security-relevant event (ISO 27001 A.12.4), published on ``audit.<service>.<action>``
    and stored by writer-postgres in ``ingestion_audit_log``: who, what, when, from where.

    Never carries a key's secret: ``key_id`` is the public id part of ``trb_<id>_<secret>``.
    ``Nats-Msg-Id`` is ``event_id``, and the table is unique on it, so a retry stores one row.
    """

    model_config = ConfigDict(extra="forbid")

    event_id: str = Field(min_length=1, max_length=64, description="Unique id (uuid4 hex).")
    at: UtcDatetime = Field(description="When it happened (UTC).")
    service: Annotated[str, StringConstraints(pattern=AUDIT_SERVICE_PATTERN)] = Field(
        description="Who recorded it: gateway-http, gateway-ws, csv-importer, cli."
    )
    action: Annotated[str, StringConstraints(pattern=AUDIT_ACTION_PATTERN)] = Field(
        description="What happened (an ``AuditAction`` value)."
    )
    outcome: Literal["success", "failure"] = Field(
        description="success for changes made, failure for refusals."
    )
    key_id: str | None = Field(
        default=None, max_length=64, description="Who: id of the API key used (never the key)."
    )
    role: str | None = Field(default=None, max_length=32, description="Role of that key.")
    client_ip: str | None = Field(
        default=None, max_length=64, description="From where: the client's address."
    )
    target: str | None = Field(
        default=None,
        max_length=1024,
        description="What: the endpoint, key id or config scope acted on.",
    )
    reason: str = Field(default="", max_length=2048, description="Human sentence: why/what.")
    details: dict[str, Any] = Field(
        default_factory=dict, description="Extra facts (role, scope, overlap…); small JSON."
    )
