r"""Classification of points against their stream configuration: pure domain code, no NATS.

Per point, first match wins (``ARCHITECTURE.md``, "Stream configuration"):

| order | zone                                         | class    | rule                |
|-------|----------------------------------------------|----------|---------------------|
| 1     | below ``min_value`` / above ``max_value``    | critical | ``physical_range``  |
| 2     | at/below ``alert_min`` / at/above ``alert_max`` | critical | ``critical_zone`` |
| 3     | below ``operational_min`` / above ``operational_max`` | warning | ``operational_range`` |
| 4     | at/below ``warning_min`` / at/above ``warning_max`` | warning | ``warning_zone`` |
| 5     | \|Δv\| > ``abs_delta``                       | severity | ``rate_abs_delta``  |
| 6     | \|Δv\| > ``rel_delta`` % of \|prev\|           | severity | ``rate_rel_delta``  |
| 7     | \|Δv\|/Δt > ``abs_slope`` per second          | severity | ``rate_abs_slope``  |
| 8     | \|Δv\|/Δt > ``rel_slope`` % of \|prev\| per s  | severity | ``rate_rel_slope``  |
| 9     | anything else                                | normal   | ``none``            |

Rate rules compare a point with its stream's previous point (``rate_constraints.severity`` is the
class, anomaly by default); a relative rule is skipped when the previous value is 0, a slope rule
when Δt ≤ 0. A point older than the stream's latest (late) or equal to it (a redelivery) never
moves the stream's state: a redelivered point gets the verdict it had (rates against the point
before it), a late one is judged by the value rules only, and its reason says so.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime
from time import time
from typing import NamedTuple

from classifier.alerts import KeyedEvent, track
from classifier.state import ClassifierState, StreamKey, StreamState
from classifier.verdict import Classified, Verdict
from tributary_contracts import (
    ClassifiedBatch,
    ClassifiedPoint,
    DataPoint,
    PointBatch,
    PointClass,
    RateConstraints,
    Severity,
    StreamConfig,
)

__all__ = [
    "NO_CONFIG_REASON",
    "Classified",
    "ClassifierState",
    "ConfigResolver",
    "MessageResult",
    "StreamKey",
    "StreamState",
    "Verdict",
    "classified_batch",
    "classify",
    "classify_batch",
    "classify_message",
    "split_by_class",
]

NO_CONFIG_REASON = "no configuration for this stream"

ConfigResolver = Callable[[str, str, str, str | None], StreamConfig | None]
"""``(domain, source_id, stream_id, stream_type) -> StreamConfig | None``."""


NO_CONFIG_VERDICT = Verdict(PointClass.NORMAL, NO_CONFIG_REASON, "none")
"""The verdict of every point of an unconfigured stream (immutable, so shared)."""

_SEVERITY_CLASS = {severity: PointClass(severity.value) for severity in Severity}
"""Class of a broken rate limit by its configured severity (a dict lookup: building the enum
per point was ~8 % of the classification CPU)."""
_NORMAL = PointClass.NORMAL
_CRITICAL = PointClass.CRITICAL
_WARNING = PointClass.WARNING


def classify(
    point: DataPoint,
    config: StreamConfig | None,
    prev_value: float | None = None,
    prev_ts: datetime | None = None,
) -> Verdict:
    """Class of ``point`` under ``config``; rate rules need the stream's previous point."""
    if config is None:
        return NO_CONFIG_VERDICT
    value = point.value
    c = config.value_constraints
    if c.min_value is not None and value < c.min_value:
        return Verdict(
            _CRITICAL,
            f"value {value} is below the physical minimum {c.min_value}",
            "physical_range",
            -1,
        )
    if c.max_value is not None and value > c.max_value:
        return Verdict(
            _CRITICAL,
            f"value {value} is above the physical maximum {c.max_value}",
            "physical_range",
            1,
        )
    if c.alert_min is not None and value <= c.alert_min:
        return Verdict(
            _CRITICAL,
            f"value {value} is at or below the alert minimum {c.alert_min}",
            "critical_zone",
            -1,
        )
    if c.alert_max is not None and value >= c.alert_max:
        return Verdict(
            _CRITICAL,
            f"value {value} is at or above the alert maximum {c.alert_max}",
            "critical_zone",
            1,
        )
    if c.operational_min is not None and value < c.operational_min:
        return Verdict(
            _WARNING,
            f"value {value} is below the operational minimum {c.operational_min}",
            "operational_range",
            -1,
        )
    if c.operational_max is not None and value > c.operational_max:
        return Verdict(
            _WARNING,
            f"value {value} is above the operational maximum {c.operational_max}",
            "operational_range",
            1,
        )
    if c.warning_min is not None and value <= c.warning_min:
        return Verdict(
            _WARNING,
            f"value {value} is at or below the warning minimum {c.warning_min}",
            "warning_zone",
            -1,
        )
    if c.warning_max is not None and value >= c.warning_max:
        return Verdict(
            _WARNING,
            f"value {value} is at or above the warning maximum {c.warning_max}",
            "warning_zone",
            1,
        )
    rates = config.rate_constraints
    if rates is not None and prev_value is not None:
        verdict = _rate_verdict(value, point.ts, prev_value, prev_ts, rates)
        if verdict is not None:
            return verdict
    return Verdict(_NORMAL, f"value {value} is within every configured limit", "none")


def _rate_verdict(
    value: float, ts: datetime, prev: float, prev_ts: datetime | None, rates: RateConstraints
) -> Verdict | None:
    """The first rate limit ``value`` breaks against ``prev`` (None when none does).

    Limits are compared multiplied out (``|Δ|·100 > rel·|prev|``) rather than divided, so a
    change exactly on a limit is not pushed over it by a rounding error.
    """
    delta = value - prev
    change = abs(delta)
    side = 1 if delta >= 0 else -1
    cls = _SEVERITY_CLASS[rates.severity]
    if rates.abs_delta is not None and change > rates.abs_delta:
        return Verdict(
            cls,
            f"change {delta:+g} from the previous value {prev} exceeds the absolute delta "
            f"limit {rates.abs_delta:g}",
            "rate_abs_delta",
            side,
        )
    scale = abs(prev)
    if rates.rel_delta is not None and scale > 0 and change * 100 > rates.rel_delta * scale:
        return Verdict(
            cls,
            f"change {delta:+g} is {change / scale * 100:.4g} % of the previous value {prev}, "
            f"above the relative delta limit {rates.rel_delta:g} %",
            "rate_rel_delta",
            side,
        )
    if (rates.abs_slope is None and rates.rel_slope is None) or prev_ts is None:
        return None
    seconds = (ts - prev_ts).total_seconds()
    if seconds <= 0:
        return None
    if rates.abs_slope is not None and change > rates.abs_slope * seconds:
        return Verdict(
            cls,
            f"change {delta:+g} in {seconds:g} s is {change / seconds:.4g}/s, above the absolute "
            f"slope limit {rates.abs_slope:g}/s",
            "rate_abs_slope",
            side,
        )
    if (
        rates.rel_slope is not None
        and scale > 0
        and change * 100 > rates.rel_slope * scale * seconds
    ):
        return Verdict(
            cls,
            f"change {delta:+g} in {seconds:g} s is {change / scale * 100 / seconds:.4g} %/s of "
            f"the previous value {prev}, above the relative slope limit {rates.rel_slope:g} %/s",
            "rate_rel_slope",
            side,
        )
    return None


def late_verdict(point: DataPoint, config: StreamConfig | None, latest: datetime) -> Verdict:
    """A late point: value rules only, and a reason that says it was late."""
    verdict = classify(point, config)
    if config is None:
        return verdict
    return verdict._replace(
        reason=f"late point (the stream is already at {latest.isoformat()}), value rules only: "
        f"{verdict.reason}"
    )


class MessageResult(NamedTuple):
    """Everything one input batch produced."""

    by_class: dict[PointClass, list[Classified]]
    """Classified points grouped by class, in order of first use, input order within a class."""
    events: list[KeyedEvent]
    """Alert events, in the order they happened."""
    over_cap: int
    """Points of new streams of a source already at its stream cap: judged by the value rules
    only, and not remembered."""


def classify_message(
    batch: PointBatch,
    resolve_config: ConfigResolver,
    state: ClassifierState,
    now: datetime | None = None,
    wall: float | None = None,
) -> MessageResult:
    """Classify every point of ``batch``, advance its streams' state and alert lifecycle.

    Each stream's config is resolved once per batch. ``now`` stamps alert events (emitted_at),
    ``wall`` (epoch seconds) is when the streams were last seen (for the staleness check).
    A stream gets state when it has a configuration (an unconfigured stream's verdict never
    depends on its past) and its source is below ``state.max_streams_per_source``; every
    checkpoint document whose streams moved is marked in ``state.dirty``.
    """
    domain, source_id = batch.domain, batch.source_id
    emitted_at = now or datetime.now(UTC)
    seen_at = time() if wall is None else wall
    configs: dict[tuple[str, str | None], StreamConfig | None] = {}
    by_class: dict[PointClass, list[Classified]] = {}
    events: list[KeyedEvent] = []
    over_cap = 0
    dirty = state.dirty
    doc_of = state.doc_of
    streams = state.streams
    for point in batch.points:
        stream_id = point.stream_id
        config_key = (stream_id, point.stream_type)
        if config_key in configs:
            config = configs[config_key]
        else:
            config = configs[config_key] = resolve_config(
                domain, source_id, stream_id, point.stream_type
            )
        version = config.version if config is not None else None
        key = (domain, source_id, stream_id)
        st = streams.get(key)
        value, ts = point.value, point.ts
        if st is None:
            verdict = classify(point, config)
            fresh = False
            if config is not None:
                st = StreamState(value, ts)
                fresh = state.add(key, st)
                if not fresh:
                    over_cap += 1
                    verdict = verdict._replace(
                        reason=f"stream limit of the source reached "
                        f"({state.max_streams_per_source} streams), value rules only: "
                        f"{verdict.reason}"
                    )
        elif ts > st.last_ts:
            verdict = classify(point, config, st.last_value, st.last_ts)
            st.prev_value, st.prev_ts = st.last_value, st.last_ts
            st.last_value, st.last_ts = value, ts
            dirty.add(doc_of[key])
            fresh = True
        else:
            fresh = False
            if ts == st.last_ts and value == st.last_value:  # redelivered: the same verdict
                verdict = classify(point, config, st.prev_value, st.prev_ts)
            else:
                verdict = late_verdict(point, config, st.last_ts)
        if fresh:
            assert st is not None
            st.seen_at = seen_at
            if config is not None:
                if st.staleness_seconds != config.staleness_seconds:
                    st.staleness_seconds = config.staleness_seconds
                    state.watch_staleness(key, st)
            if (
                verdict.cls is not _NORMAL
                or st.run
                or st.alert is not None
                or st.stale_alert is not None
            ):
                for event in track(key, st, value, ts, verdict, config, version, emitted_at):
                    events.append((key, event))
        classified = (point, verdict, version)
        group = by_class.get(verdict.cls)
        if group is None:
            by_class[verdict.cls] = [classified]
        else:
            group.append(classified)
    return MessageResult(by_class, events, over_cap)


def split_by_class(
    batch: PointBatch, resolve_config: ConfigResolver, state: ClassifierState
) -> dict[PointClass, list[Classified]]:
    """``classify_message`` without the alert events: the classified points by class."""
    return classify_message(batch, resolve_config, state).by_class


def classify_batch(
    batch: PointBatch,
    resolve_config: ConfigResolver,
    state: ClassifierState,
    now: datetime | None = None,
) -> list[ClassifiedBatch]:
    """``split_by_class`` as ClassifiedBatch models: one per class, in order of first use.

    The straightforward form of the output. The service publishes the same content without
    building a model per point (``classifier.encode``), and its tests compare the two.
    """
    classified_at = now or datetime.now(UTC)
    return [
        classified_batch(batch, cls, classified_at, points)
        for cls, points in split_by_class(batch, resolve_config, state).items()
    ]


def classified_batch(
    batch: PointBatch, cls: PointClass, classified_at: datetime, points: list[Classified]
) -> ClassifiedBatch:
    """The ClassifiedBatch of ``points`` (all of class ``cls``), built without re-validation."""
    result = ClassifiedBatch.model_construct(
        domain=batch.domain,
        source_id=batch.source_id,
        transport=batch.transport,
        received_at=batch.received_at,
        classified_at=classified_at,
        points=[
            ClassifiedPoint.model_construct(
                **point.__dict__, reason=verdict.reason, rule=verdict.rule, config_version=version
            )
            for point, verdict, version in points
        ],
    )
    # ``cls`` cannot be a keyword of model_construct (it is the classmethod's own first argument).
    result.cls = cls
    return result
