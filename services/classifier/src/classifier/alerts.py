"""Alert lifecycle of one stream, driven by the verdicts of its points: pure code, no NATS.

One active alert per stream (seed rule: close the previous one before creating another):

- a run of ``consecutive_violations_required`` violating points in a row (any class but normal)
  **opens** an alert; its severity is the most severe class of the run, its first value/time
  those of the run's first point, its count the run's length;
- a violating point of a *higher* class than the open alert (anomaly < warning < critical)
  **escalates**: a ``closed`` event for the old alert and an ``escalated`` event for a new one
  that starts at this point (no consecutive count or cooldown applies to an escalation);
- any other violating point extends the open alert (last value/time, peak, count);
- a normal point **closes** it (``closed_at`` = the point's event time) and starts the cooldown:
  no alert opens again until ``cooldown_seconds`` of event time have passed since that close
  (the run keeps counting meanwhile, so a still-violating stream opens at the first point after
  the cooldown).

Staleness (``staleness_seconds``) is a separate slot: the service's periodic check opens a
``staleness`` alert (severity warning) for a stream without a point for that long (wall clock);
the stream's next point closes it.

Alert ids are deterministic (stream, kind, first event time), so the events recomputed from a
redelivered input carry the same ``Nats-Msg-Id`` and are deduplicated by JetStream.
"""

from __future__ import annotations

import hashlib
from datetime import UTC, datetime

from classifier.state import SEVERITY_RANK, ClassifierState, OpenAlert, StreamKey, StreamState
from classifier.verdict import Verdict
from tributary_contracts import AlertEvent, AlertEventKind, PointClass, StreamConfig

STALENESS_RULE = "staleness"

KeyedEvent = tuple[StreamKey, AlertEvent]


def alert_id(key: StreamKey, kind: str, first_at: datetime) -> str:
    """Stable id of the alert of stream ``key`` of ``kind`` whose first point is at ``first_at``."""
    text = "\x1f".join((*key, kind, first_at.astimezone(UTC).isoformat()))
    return hashlib.sha256(text.encode()).hexdigest()[:32]


def event_msg_id(event: AlertEvent) -> str:
    """``Nats-Msg-Id`` of an alert event (the contract's ``<alert_id>:<event>``)."""
    return f"{event.alert_id}:{event.event}"


def _event(
    kind: AlertEventKind,
    key: StreamKey,
    alert: OpenAlert,
    emitted_at: datetime,
    closed_at: datetime | None = None,
) -> AlertEvent:
    domain, source_id, stream_id = key
    # Built from validated points and configs: no second validation (events can be frequent
    # on a flapping stream).
    return AlertEvent.model_construct(
        event=kind,
        alert_id=alert.alert_id,
        domain=domain,
        source_id=source_id,
        stream_id=stream_id,
        severity=alert.severity,
        rule=alert.rule,
        reason=alert.reason,
        first_value=alert.first_value,
        first_at=alert.first_at,
        last_value=alert.last_value,
        last_at=alert.last_at,
        peak_value=alert.peak_value,
        violation_count=alert.violation_count,
        opened_at=alert.opened_at,
        closed_at=closed_at,
        config_version=alert.config_version,
        emitted_at=emitted_at,
    )


def _more_extreme(side: int, current: float, value: float) -> float:
    return max(current, value) if side >= 0 else min(current, value)


def _in_cooldown(state: StreamState, config: StreamConfig | None, ts: datetime) -> bool:
    if state.last_close_at is None or config is None or not config.cooldown_seconds:
        return False
    return (ts - state.last_close_at).total_seconds() < config.cooldown_seconds


def track(
    key: StreamKey,
    state: StreamState,
    value: float,
    ts: datetime,
    verdict: Verdict,
    config: StreamConfig | None,
    version: int | None,
    emitted_at: datetime,
) -> list[AlertEvent]:
    """Advance ``state``'s run and alert with a new (in order, not seen before) point."""
    events: list[AlertEvent] = []
    if state.stale_alert is not None:  # the stream spoke again
        events.append(_event(AlertEventKind.CLOSED, key, state.stale_alert, emitted_at, ts))
        state.stale_alert = None
    cls = verdict.cls
    alert = state.alert
    if cls is PointClass.NORMAL or cls is PointClass.REJECTED:
        state.run = 0
        state.run_cls = PointClass.NORMAL
        if alert is not None:
            events.append(_event(AlertEventKind.CLOSED, key, alert, emitted_at, ts))
            state.alert = None
            state.last_close_at = ts
        return events

    side = verdict.side or 1
    if state.run == 0:
        state.run_first_value, state.run_first_at = value, ts
        state.run_peak, state.run_side, state.run_cls = value, side, cls
    else:
        state.run_peak = _more_extreme(state.run_side, state.run_peak, value)
        if SEVERITY_RANK[cls] > SEVERITY_RANK[state.run_cls]:
            state.run_cls = cls
    state.run += 1
    state.run_rule = verdict.rule

    if alert is not None:
        if SEVERITY_RANK[cls] > SEVERITY_RANK[alert.severity]:
            events.append(_event(AlertEventKind.CLOSED, key, alert, emitted_at, ts))
            state.alert = OpenAlert(
                alert_id(key, str(cls), ts),
                cls,
                verdict.rule,
                verdict.reason,
                value,
                ts,
                value,
                ts,
                value,
                1,
                ts,
                version,
                side,
            )
            events.append(_event(AlertEventKind.ESCALATED, key, state.alert, emitted_at))
        else:
            alert.last_value, alert.last_at = value, ts
            alert.peak_value = _more_extreme(alert.side, alert.peak_value, value)
            alert.violation_count += 1
            alert.rule, alert.reason, alert.config_version = verdict.rule, verdict.reason, version
        return events

    required = config.consecutive_violations_required if config is not None else 1
    if state.run >= required and not _in_cooldown(state, config, ts):
        assert state.run_first_at is not None
        state.alert = OpenAlert(
            alert_id(key, str(state.run_cls), state.run_first_at),
            state.run_cls,
            verdict.rule,
            verdict.reason,
            state.run_first_value,
            state.run_first_at,
            value,
            ts,
            state.run_peak,
            state.run,
            ts,
            version,
            state.run_side,
        )
        events.append(_event(AlertEventKind.OPENED, key, state.alert, emitted_at))
    return events


def staleness_events(
    state: ClassifierState, now: float, emitted_at: datetime, limit: int
) -> list[KeyedEvent]:
    """Open a staleness alert on every watched stream silent for its ``staleness_seconds``.

    ``now`` is wall-clock epoch seconds (compared with each stream's ``seen_at``). At most
    ``limit`` alerts per call; the rest are found by the next call.
    """
    found: list[KeyedEvent] = []
    for key, st in state.stale_watch.items():
        limit_s = st.staleness_seconds
        if st.stale_alert is not None or limit_s is None or now - st.seen_at < limit_s:
            continue
        silent = now - st.seen_at
        st.stale_alert = OpenAlert(
            alert_id(key, STALENESS_RULE, st.last_ts),
            PointClass.WARNING,
            STALENESS_RULE,
            f"no point for {silent:.0f} s (staleness limit {limit_s:g} s); "
            f"the latest was {st.last_value} at {st.last_ts.isoformat()}",
            st.last_value,
            st.last_ts,
            st.last_value,
            st.last_ts,
            st.last_value,
            1,
            emitted_at,
            None,
            1,
        )
        found.append((key, _event(AlertEventKind.OPENED, key, st.stale_alert, emitted_at)))
        if len(found) >= limit:
            break
    return found
