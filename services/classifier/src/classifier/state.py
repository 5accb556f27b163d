"""What the classifier remembers of each stream between points, and its checkpoint form.

One ``StreamState`` per ``(domain, source_id, stream_id)``: the latest point (and the one before
it, so a redelivered point gets the same rate verdict again), the run of consecutive violating
points, the open alert, the event time of the last recovery (cooldown), the staleness alert, and
the alert events not yet acknowledged by JetStream (``pending``: re-published if the points that
made them come back, deduplicated by their ``Nats-Msg-Id``).

Checkpoints are per source: the streams of one ``(domain, source_id)`` are grouped in chunks of
at most ``CHUNK_STREAMS`` (in the order this process first saw them), and each chunk is one JSON
document in the ``classifier-state`` bucket (``source_doc_key``, ``source_doc_json`` /
``source_doc_from_json``). A source with up to ``CHUNK_STREAMS`` streams is one document, so an
input batch (one source) costs at most one checkpoint write.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import orjson

from tributary_contracts import PointClass, escape_key

StreamKey = tuple[str, str, str]
"""``(domain, source_id, stream_id)``: identity of one stream."""

DocKey = tuple[str, str, int]
"""``(domain, source_id, chunk)``: one checkpoint document."""

CHUNK_STREAMS = 256
"""Most streams in one checkpoint document. A stream with an open alert and a few pending
events is ≈ 2–3 KB of JSON, so a document stays well under NATS's default 1 MB max payload
(the KV bucket's ``max_msg_size`` is 8 MB)."""

SEVERITY_RANK = {
    PointClass.NORMAL: 0,
    PointClass.ANOMALY: 1,
    PointClass.WARNING: 2,
    PointClass.CRITICAL: 3,
}
"""Order of the violating classes: an open alert escalates to a higher rank only."""


@dataclass(slots=True)
class OpenAlert:
    """An alert that is open on a stream (value alert or staleness alert)."""

    alert_id: str
    severity: PointClass
    rule: str
    reason: str
    first_value: float
    first_at: datetime
    last_value: float
    last_at: datetime
    peak_value: float
    violation_count: int
    opened_at: datetime
    config_version: int | None
    side: int
    """+1 when the first violation was high, -1 when low: the direction ``peak_value`` follows."""


@dataclass(slots=True)
class PendingEvent:
    """An alert event published but not yet acknowledged."""

    msg_id: str
    subject: str
    payload: bytes
    kind: str
    """opened, escalated or closed (the event's ``event``)."""


@dataclass(slots=True)
class StreamState:
    """One stream's memory. ``last_*`` never moves back in time (late points leave it alone)."""

    last_value: float
    last_ts: datetime
    prev_value: float | None = None
    prev_ts: datetime | None = None
    run: int = 0
    """Consecutive violating points up to the latest one (0 after a normal point)."""
    run_cls: PointClass = PointClass.NORMAL
    """The most severe class of the current run."""
    run_first_value: float = 0.0
    run_first_at: datetime | None = None
    run_peak: float = 0.0
    run_side: int = 0
    run_rule: str = ""
    alert: OpenAlert | None = None
    last_close_at: datetime | None = None
    """Event time of the recovery that closed the latest alert (start of the cooldown)."""
    stale_alert: OpenAlert | None = None
    staleness_seconds: float | None = None
    """From the latest point's config: the staleness check watches only streams that set it."""
    seen_at: float = 0.0
    """Wall-clock time (epoch seconds) at which the latest point was classified."""
    pending: list[PendingEvent] = field(default_factory=list)


class ClassifierState:
    """Per-stream state of every stream seen, keyed by ``(domain, source_id, stream_id)``."""

    def __init__(self) -> None:
        self.streams: dict[StreamKey, StreamState] = {}
        self.stale_watch: dict[StreamKey, StreamState] = {}
        """Streams whose latest config sets ``staleness_seconds`` (what the check scans)."""
        self.dirty: set[StreamKey] = set()
        """Configured streams whose latest point moved since their last checkpoint."""
        self.chunks: dict[tuple[str, str], list[list[str]]] = {}
        """Stream ids of each source, in chunks of at most ``CHUNK_STREAMS`` (documents)."""
        self.doc_of: dict[StreamKey, DocKey] = {}
        """The checkpoint document each stream belongs to."""

    def add(self, key: StreamKey, state: StreamState) -> None:
        """Remember a new stream and give it a place in its source's checkpoint documents."""
        self.streams[key] = state
        if key in self.doc_of:
            return
        source = (key[0], key[1])
        chunks = self.chunks.get(source)
        if chunks is None:
            chunks = self.chunks[source] = [[]]
        if len(chunks[-1]) >= CHUNK_STREAMS:
            chunks.append([])
        chunks[-1].append(key[2])
        self.doc_of[key] = (key[0], key[1], len(chunks) - 1)

    def doc_streams(self, doc: DocKey) -> list[str]:
        """Stream ids in checkpoint document ``doc``."""
        chunks = self.chunks.get((doc[0], doc[1]))
        if chunks is None or doc[2] >= len(chunks):
            return []
        return chunks[doc[2]]

    def get(self, key: StreamKey) -> StreamState | None:
        return self.streams.get(key)

    def watch_staleness(self, key: StreamKey, state: StreamState) -> None:
        if state.staleness_seconds is None:
            self.stale_watch.pop(key, None)
        else:
            self.stale_watch[key] = state

    def restore(self, key: StreamKey, state: StreamState) -> bool:
        """Adopt a checkpointed state unless ours is as recent; True when adopted."""
        mine = self.streams.get(key)
        if mine is not None and mine.last_ts >= state.last_ts:
            return False
        self.add(key, state)
        self.watch_staleness(key, state)
        return True

    def __len__(self) -> int:
        return len(self.streams)


# -- checkpoint form --------------------------------------------------------------------------


def _alert_doc(alert: OpenAlert | None) -> dict[str, Any] | None:
    if alert is None:
        return None
    return {
        "id": alert.alert_id,
        "sev": str(alert.severity),
        "rule": alert.rule,
        "reason": alert.reason,
        "fv": alert.first_value,
        "fa": alert.first_at,
        "lv": alert.last_value,
        "la": alert.last_at,
        "pk": alert.peak_value,
        "n": alert.violation_count,
        "oa": alert.opened_at,
        "cv": alert.config_version,
        "side": alert.side,
    }


def _alert_from(doc: dict[str, Any] | None) -> OpenAlert | None:
    if doc is None:
        return None
    return OpenAlert(
        alert_id=doc["id"],
        severity=PointClass(doc["sev"]),
        rule=doc["rule"],
        reason=doc["reason"],
        first_value=doc["fv"],
        first_at=datetime.fromisoformat(doc["fa"]),
        last_value=doc["lv"],
        last_at=datetime.fromisoformat(doc["la"]),
        peak_value=doc["pk"],
        violation_count=doc["n"],
        opened_at=datetime.fromisoformat(doc["oa"]),
        config_version=doc["cv"],
        side=doc["side"],
    )


def _ts(value: str | None) -> datetime | None:
    return None if value is None else datetime.fromisoformat(value)


def _state_doc(state: StreamState) -> dict[str, Any]:
    return {
        "v": state.last_value,
        "t": state.last_ts,
        "pv": state.prev_value,
        "pt": state.prev_ts,
        "run": state.run,
        "rc": str(state.run_cls),
        "rfv": state.run_first_value,
        "rfa": state.run_first_at,
        "rpk": state.run_peak,
        "rs": state.run_side,
        "rr": state.run_rule,
        "alert": _alert_doc(state.alert),
        "lc": state.last_close_at,
        "stale": _alert_doc(state.stale_alert),
        "ss": state.staleness_seconds,
        "seen": state.seen_at,
        "pending": [[p.msg_id, p.subject, p.payload.decode(), p.kind] for p in state.pending],
    }


def _state_from(doc: dict[str, Any]) -> StreamState:
    last_ts = datetime.fromisoformat(doc["t"])
    return StreamState(
        last_value=doc["v"],
        last_ts=last_ts,
        prev_value=doc["pv"],
        prev_ts=_ts(doc["pt"]),
        run=doc["run"],
        run_cls=PointClass(doc["rc"]),
        run_first_value=doc["rfv"],
        run_first_at=_ts(doc["rfa"]),
        run_peak=doc["rpk"],
        run_side=doc["rs"],
        run_rule=doc["rr"],
        alert=_alert_from(doc["alert"]),
        last_close_at=_ts(doc["lc"]),
        stale_alert=_alert_from(doc["stale"]),
        staleness_seconds=doc["ss"],
        seen_at=doc["seen"],
        pending=[_pending_from(entry) for entry in doc["pending"]],
    )


def _pending_from(entry: list[str]) -> PendingEvent:
    msg_id, subject, payload, *kind = entry
    # Three fields: written before events carried their kind; the payload has it.
    event = kind[0] if kind else orjson.loads(payload)["event"]
    return PendingEvent(msg_id, subject, payload.encode(), event)


def source_doc_key(doc: DocKey) -> str:
    """KV key of a checkpoint document: ``<domain>.<source_id>`` (escaped with ``escape_key``),
    plus ``.<chunk>`` for the chunks after the first."""
    domain, source_id, chunk = doc
    key = f"{escape_key(domain)}.{escape_key(source_id)}"
    return key if chunk == 0 else f"{key}.{chunk}"


def source_doc_json(
    doc: DocKey, stream_ids: Iterable[str], streams: dict[StreamKey, StreamState]
) -> bytes:
    """A checkpoint document (version 2, ``"f": 2``): the states of ``stream_ids`` of one source,
    each a full object, or ``[value, ts, prev_value, prev_ts, staleness_seconds, seen_at]`` for
    a stream without a run, alert, pending event or close time."""
    domain, source_id, chunk = doc
    states = {}
    for stream_id in stream_ids:
        st = streams.get((domain, source_id, stream_id))
        if st is None:
            continue
        if (
            st.run == 0
            and st.alert is None
            and st.stale_alert is None
            and not st.pending
            and st.last_close_at is None
        ):  # nothing but its latest points: a short list (most streams, most of the time)
            states[stream_id] = (
                st.last_value,
                st.last_ts,
                st.prev_value,
                st.prev_ts,
                st.staleness_seconds,
                st.seen_at,
            )
        else:
            states[stream_id] = _state_doc(st)
    body = {"f": 2, "d": domain, "s": source_id, "c": chunk, "streams": states}
    return orjson.dumps(body, option=orjson.OPT_UTC_Z)


def source_doc_from_json(data: bytes) -> list[tuple[StreamKey, StreamState]]:
    """Reverse ``source_doc_json``. Raises ValueError/KeyError/TypeError on a foreign one."""
    doc = orjson.loads(data)
    if doc.get("f") != 2:
        raise ValueError(f"unknown classifier-state format {doc.get('f')!r}")
    domain, source_id = doc["d"], doc["s"]
    return [((domain, source_id, sid), _state_from_any(st)) for sid, st in doc["streams"].items()]


def _state_from_any(doc: dict[str, Any] | list[Any]) -> StreamState:
    if isinstance(doc, dict):
        return _state_from(doc)
    value, ts, prev_value, prev_ts, staleness_seconds, seen_at = doc
    return StreamState(
        last_value=value,
        last_ts=datetime.fromisoformat(ts),
        prev_value=prev_value,
        prev_ts=_ts(prev_ts),
        staleness_seconds=staleness_seconds,
        seen_at=seen_at,
    )
