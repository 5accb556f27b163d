"""What the classifier remembers of each stream between points, and its checkpoint form.

One ``StreamState`` per configured ``(domain, source_id, stream_id)`` (a stream without a
configuration needs no memory: its verdict never depends on its past): the latest point (and
the one before it, so a redelivered point gets the same rate verdict again), the run of
consecutive violating points, the open alert, the event time of the last recovery (cooldown)
and the staleness alert.

The streams of one ``(domain, source_id)`` are grouped in chunks of at most ``CHUNK_STREAMS``
(in the order this process first saw them), each chunk one JSON document of the
``classifier-state`` bucket (``source_doc_key``, ``source_doc_json`` / ``source_doc_from_json``),
written by the partition's snapshots (``classifier.checkpoint``).
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

SourceKey = tuple[str, str]
"""``(domain, source_id)``: one source."""

DocKey = tuple[str, str, int]
"""``(domain, source_id, chunk)``: one checkpoint document."""

CHUNK_STREAMS = 256
"""Most streams in one checkpoint document. A stream with an open alert is ≈ 1–2 KB of JSON, so
a document stays well under NATS's default 1 MB max payload (the KV bucket's ``max_msg_size``
is 8 MB)."""

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


class ClassifierState:
    """Per-stream state of the streams of one partition, keyed by ``(domain, source_id,
    stream_id)``, with what its checkpoints need: which documents changed since the last
    snapshot (``dirty``), the input position each source's state covers (``covered``), and
    which sources have documents in the bucket (``on_disk``: evicted ones come back from there).
    """

    def __init__(self, max_streams_per_source: int = 10_000) -> None:
        self.max_streams_per_source = max_streams_per_source
        self.streams: dict[StreamKey, StreamState] = {}
        self.stale_watch: dict[StreamKey, StreamState] = {}
        """Streams whose latest config sets ``staleness_seconds`` (what the check scans)."""
        self.dirty: set[DocKey] = set()
        """Checkpoint documents whose streams changed since the last snapshot."""
        self.chunks: dict[SourceKey, list[list[str]]] = {}
        """Stream ids of each source, in chunks of at most ``CHUNK_STREAMS`` (documents)."""
        self.doc_of: dict[StreamKey, DocKey] = {}
        """The checkpoint document each stream belongs to."""
        self.covered: dict[SourceKey, int] = {}
        """Per source, the stream sequence of the last bundle whose points its state holds: a
        bundle at or below it was classified already (its outputs published before the
        snapshot that recorded it)."""
        self.seen: dict[SourceKey, float] = {}
        """Per source in memory, the wall-clock time of its latest point (idle eviction)."""
        self.on_disk: set[SourceKey] = set()
        """Sources with checkpoint documents in the bucket: one not in memory is restored from
        them before its next point is classified."""

    def add(self, key: StreamKey, state: StreamState) -> bool:
        """Remember a stream and give it a place in its source's checkpoint documents; False
        (not added) when its source already has ``max_streams_per_source`` streams."""
        if key not in self.doc_of:
            source = (key[0], key[1])
            chunks = self.chunks.get(source)
            if chunks is None:
                chunks = self.chunks[source] = [[]]
            elif (len(chunks) - 1) * CHUNK_STREAMS + len(chunks[-1]) >= self.max_streams_per_source:
                return False
            if len(chunks[-1]) >= CHUNK_STREAMS:
                chunks.append([])
            chunks[-1].append(key[2])
            self.doc_of[key] = (key[0], key[1], len(chunks) - 1)
        self.streams[key] = state
        self.dirty.add(self.doc_of[key])
        return True

    def doc_streams(self, doc: DocKey) -> list[str]:
        """Stream ids in checkpoint document ``doc``."""
        chunks = self.chunks.get((doc[0], doc[1]))
        if chunks is None or doc[2] >= len(chunks):
            return []
        return chunks[doc[2]]

    def chunk_count(self, source: SourceKey) -> int:
        return len(self.chunks.get(source, ()))

    def get(self, key: StreamKey) -> StreamState | None:
        return self.streams.get(key)

    def watch_staleness(self, key: StreamKey, state: StreamState) -> None:
        if state.staleness_seconds is None:
            self.stale_watch.pop(key, None)
        else:
            self.stale_watch[key] = state

    def restore(self, key: StreamKey, state: StreamState) -> bool:
        """Adopt a checkpointed state unless ours is as recent; True when adopted. A restored
        stream is not dirty: the bucket holds it already."""
        mine = self.streams.get(key)
        if mine is not None and mine.last_ts >= state.last_ts:
            return False
        was_dirty = self.doc_of.get(key) in self.dirty
        if not self.add(key, state):
            return False
        if not was_dirty:
            self.dirty.discard(self.doc_of[key])
        self.watch_staleness(key, state)
        source = (key[0], key[1])
        self.seen[source] = max(self.seen.get(source, 0.0), state.seen_at)
        return True

    def restore_source(
        self, source: SourceKey, covered: int, states: Iterable[tuple[StreamKey, StreamState]]
    ) -> None:
        """Adopt the documents of ``source`` read from the bucket (``covered``: the input
        position they hold)."""
        self.on_disk.add(source)
        if covered > self.covered.get(source, 0):
            self.covered[source] = covered
        for key, state in states:
            self.restore(key, state)

    def evictable(self, source: SourceKey) -> bool:
        """Whether ``source`` can leave memory: nothing unsaved, no staleness to watch."""
        chunks = self.chunks.get(source)
        if chunks is None:
            return True
        domain, source_id = source
        for chunk, ids in enumerate(chunks):
            if (domain, source_id, chunk) in self.dirty:
                return False
            for stream_id in ids:
                st = self.streams.get((domain, source_id, stream_id))
                if st is not None and st.staleness_seconds is not None and st.stale_alert is None:
                    return False  # its staleness alert must still be able to open
        return True

    def evict(self, source: SourceKey) -> int:
        """Forget ``source``'s streams (their documents are in the bucket); the count."""
        domain, source_id = source
        chunks = self.chunks.pop(source, [])
        count = 0
        for ids in chunks:
            for stream_id in ids:
                key = (domain, source_id, stream_id)
                self.streams.pop(key, None)
                self.stale_watch.pop(key, None)
                self.doc_of.pop(key, None)
                count += 1
        self.covered.pop(source, None)
        self.seen.pop(source, None)
        return count

    def evict_idle(self, idle_before: float, max_streams: int) -> int:
        """Evict the sources idle since before ``idle_before`` (wall clock), then the least
        recently seen until at most ``max_streams`` streams stay; only sources that are
        ``evictable``. The number of streams evicted."""
        evicted = 0
        by_age = sorted(self.seen.items(), key=lambda item: item[1])
        for source, seen in by_age:
            if seen >= idle_before and len(self.streams) <= max_streams:
                break
            if source in self.on_disk and self.evictable(source):
                evicted += self.evict(source)
        return evicted

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
    )


@dataclass(frozen=True, slots=True)
class LegacyEvent:
    """An alert event a former checkpoint (``"f": 2``) held as published but not yet acked: the
    classifier publishes it again at start (deduplicated by its ``Nats-Msg-Id``)."""

    msg_id: str
    subject: str
    payload: bytes


@dataclass(slots=True)
class SourceDoc:
    """One checkpoint document as read from the bucket."""

    source: SourceKey
    chunk: int
    chunks: int
    """How many documents the source has (known from chunk 0; 0 when unknown)."""
    covered: int
    """Stream sequence of the last bundle whose points the document holds (0: unknown)."""
    states: list[tuple[StreamKey, StreamState]]
    legacy_events: list[LegacyEvent] = field(default_factory=list)


def source_doc_key(doc: DocKey) -> str:
    """KV key of a checkpoint document: ``<domain>.<source_id>`` (escaped with ``escape_key``),
    plus ``.<chunk>`` for the chunks after the first."""
    domain, source_id, chunk = doc
    key = f"{escape_key(domain)}.{escape_key(source_id)}"
    return key if chunk == 0 else f"{key}.{chunk}"


def source_doc_json(
    doc: DocKey,
    stream_ids: Iterable[str],
    streams: dict[StreamKey, StreamState],
    covered: int = 0,
    chunks: int = 1,
) -> bytes:
    """A checkpoint document (version 3, ``"f": 3``): the states of ``stream_ids`` of one source,
    each a full object, or ``[value, ts, prev_value, prev_ts, staleness_seconds, seen_at]`` for
    a stream without a run, alert or close time; ``seq``: the input position it covers
    (``covered``); ``n``: the source's number of documents."""
    domain, source_id, chunk = doc
    states = {}
    for stream_id in stream_ids:
        st = streams.get((domain, source_id, stream_id))
        if st is None:
            continue
        if (
            st.run == 0 and st.alert is None and st.stale_alert is None and st.last_close_at is None
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
    body = {
        "f": 3,
        "d": domain,
        "s": source_id,
        "c": chunk,
        "n": chunks,
        "seq": covered,
        "streams": states,
    }
    return orjson.dumps(body, option=orjson.OPT_UTC_Z)


def source_doc_from_json(data: bytes) -> SourceDoc:
    """Reverse ``source_doc_json``; also reads the former ``"f": 2`` documents (no position;
    their alert events not yet acked come back as ``legacy_events``). Raises
    ValueError/KeyError/TypeError on a foreign one."""
    doc = orjson.loads(data)
    form = doc.get("f")
    if form not in (2, 3):
        raise ValueError(f"unknown classifier-state format {form!r}")
    domain, source_id = doc["d"], doc["s"]
    states = [((domain, source_id, sid), _state_from_any(st)) for sid, st in doc["streams"].items()]
    legacy = [
        LegacyEvent(entry[0], entry[1], entry[2].encode())
        for st in doc["streams"].values()
        if isinstance(st, dict)
        for entry in st.get("pending", ())
    ]
    chunk = doc["c"]
    return SourceDoc((domain, source_id), chunk, doc.get("n", 0), doc.get("seq", 0), states, legacy)


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
