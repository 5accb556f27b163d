"""Checkpoints by partition: snapshots of a partition's state tied to the input they cover,
the acks they release, and the load (at start and on demand) from the ``classifier-state`` bucket.

A partition's pull loops classify inputs and publish their outputs (``RawBatchHandler``) but do
not ack them. ``PartitionCheckpoint`` acks them, by snapshot, every
``CHECKPOINT_INTERVAL_SECONDS`` or once ``CHECKPOINT_MAX_INPUTS`` inputs wait:

1. **cut** (no ``await``, so between two fetches): the inputs classified so far, the publish
   tasks of their outputs, and the body of every checkpoint document whose streams changed since
   the last snapshot (``ClassifierState.dirty``), each holding ``seq``: the stream sequence of
   the last bundle whose points that source's state holds (``ClassifierState.covered``);
2. wait until every output of those inputs is acked by JetStream (the publish tasks retry until
   it is, so an output is never lost while the process lives);
3. write the documents (KV puts, acks awaited together); on a failure they stay dirty and the
   inputs wait for the next snapshot;
4. ack the inputs.

So a document in the bucket never holds the effect of an input whose outputs are not durable,
and an input is acked only once the state it produced is. After a restart the consumer
redelivers what was not acked; a bundle at or below the ``seq`` of its source's document was
classified into that state and its outputs are durable: its batches of that source are skipped
(exactly once, no replay through a later state). Anything later is classified again on the state
it was first classified on, so it gets the same verdicts, the same outputs and the same alert
ids (deduplicated by ``Nats-Msg-Id``, and by the writers' unique key).

Size and frequency are bounded: a document holds at most ``CHUNK_STREAMS`` streams, and a
document is written at most once per snapshot however many inputs touched it. Nothing is
written for a source whose streams did not move (nor for unconfigured streams, which have no
state).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Iterable
from time import monotonic, time
from typing import Any

import structlog
from nats.aio.msg import Msg

from classifier import metrics
from classifier.metrics import (
    CHECKPOINT_WRITES,
    ERRORS,
    EVICTED_STREAMS,
    SNAPSHOT_SECONDS,
    STATE_STREAMS,
)
from classifier.outbox import Outbox
from classifier.state import (
    ClassifierState,
    DocKey,
    LegacyEvent,
    SourceDoc,
    SourceKey,
    source_doc_from_json,
    source_doc_json,
    source_doc_key,
)
from tributary_contracts import escape_key
from tributary_runtime.delivery import ack_all
from tributary_runtime.kvwatch import KvFollower
from tributary_runtime.publish import Outgoing, publish_until_acked

log = structlog.get_logger(__name__)

_DELETE_OPERATIONS = ("DEL", "PURGE")


def kv_put_subject(bucket: str, key: str) -> str:
    """Subject of a put of ``key`` into KV bucket ``bucket`` (NATS KV protocol)."""
    return f"$KV.{bucket}.{key}"


def kv_stream(bucket: str) -> str:
    """JetStream stream behind KV bucket ``bucket`` (NATS KV protocol)."""
    return f"KV_{bucket}"


def document_writes(state: ClassifierState, bucket: str, docs: Iterable[DocKey]) -> list[Outgoing]:
    """The KV puts of ``docs`` with the state as it is now (bodies made here, not at send)."""
    stream = kv_stream(bucket)
    writes = []
    for doc in docs:
        source = (doc[0], doc[1])
        body = source_doc_json(
            doc,
            state.doc_streams(doc),
            state.streams,
            state.covered.get(source, 0),
            state.chunk_count(source),
        )
        writes.append(Outgoing(kv_put_subject(bucket, source_doc_key(doc)), body, {}, stream))
    return writes


class PartitionCheckpoint:
    """Snapshots one partition's state and acks the inputs each snapshot covers."""

    def __init__(
        self,
        partition: int,
        state: ClassifierState,
        outbox: Outbox,
        bucket: str,
        *,
        max_inputs: int = 2000,
        retry_delay: float = 1.0,
        max_retry_delay: float = 30.0,
    ) -> None:
        self.partition = partition
        self.state = state
        self.outbox = outbox
        self.bucket = bucket
        self.max_inputs = max_inputs
        self.retry_delay = retry_delay
        self.max_retry_delay = max_retry_delay
        self.inputs: list[Msg] = []
        """Inputs classified since the last cut, in order: acked by the next snapshot."""
        self.publishing: set[asyncio.Task[Any]] = set()
        """Tasks publishing the outputs of classified inputs (and staleness events)."""
        self.due = asyncio.Event()
        """Set when enough inputs wait: the snapshot loop does not wait for its interval."""
        self._lock = asyncio.Lock()
        self.given_up = False
        """A publish was given up (stopping) or failed: no snapshot may write or ack any more,
        since some classified input lacks its outputs (it comes back after the restart)."""

    def track(self, inputs: Iterable[Msg], publishing: asyncio.Task[Any] | None) -> None:
        """Inputs just classified (acked by a later snapshot) and the task publishing their
        outputs (awaited before that snapshot is written)."""
        self.inputs.extend(inputs)
        if publishing is not None:
            self.publishing.add(publishing)
            publishing.add_done_callback(self._published)
        if len(self.inputs) >= self.max_inputs:
            self.due.set()

    def _published(self, task: asyncio.Task[Any]) -> None:
        self.publishing.discard(task)
        if task.cancelled() or task.exception() is not None or task.result() is not True:
            self.given_up = True

    async def snapshot(self, give_up: asyncio.Event | None = None) -> int:
        """Cut, wait for the outputs, write the changed documents, ack: the inputs acked."""
        async with self._lock:  # one snapshot of a partition at a time, in cut order
            started = monotonic()
            inputs, self.inputs = self.inputs, []
            self.due.clear()
            publishing = list(self.publishing)
            docs, self.state.dirty = self.state.dirty, set()
            writes = document_writes(self.state, self.bucket, docs)
            await asyncio.gather(*publishing, return_exceptions=True)
            if self.given_up:
                # Given up (stopping) or a defect: outputs of these inputs may be missing, so
                # neither their state nor their acks may go out; they come back after a restart.
                self.state.dirty |= docs
                return 0
            written = await publish_until_acked(
                self.outbox.publish_all,
                writes,
                retry_delay=self.retry_delay,
                max_delay=self.max_retry_delay,
                give_up=give_up,
                on_error=self._write_failed,
            )
            if not written:  # stopping: the inputs are redelivered after the restart
                self.state.dirty |= docs
                return 0
            if writes:
                CHECKPOINT_WRITES.inc(len(writes))
                self.state.on_disk.update((d[0], d[1]) for d in docs)
            acked = await ack_all(inputs, metrics)  # a lost ack: skipped by its covered seq
            SNAPSHOT_SECONDS.observe(monotonic() - started)
            STATE_STREAMS.labels(partition=str(self.partition)).set(len(self.state))
            return acked

    def _write_failed(self, error: BaseException) -> None:
        ERRORS.labels(stage="checkpoint", error_type=type(error).__name__).inc()
        log.warning(
            "checkpoint write failed; retrying", partition=self.partition, error=repr(error)
        )

    async def run(self, interval: float, stopping: asyncio.Event) -> None:
        """Snapshot every ``interval`` seconds, or sooner when ``due``, until ``stopping``."""
        while not stopping.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.due.wait(), interval)
            try:
                await self.snapshot(stopping)
            except Exception:  # a defect: the inputs wait for the next round, never lost
                ERRORS.labels(stage="checkpoint", error_type="defect").inc()
                log.exception("snapshot failed", partition=self.partition)

    async def evict_idle(self, idle_seconds: float, max_streams: int) -> int:
        """Evict sources idle for ``idle_seconds`` (then the least recent ones above
        ``max_streams``) whose state is in the bucket; the streams evicted. Never while a
        snapshot writes (a document cut but not yet written is not in the bucket)."""
        async with self._lock:
            evicted = self.state.evict_idle(time() - idle_seconds, max_streams)
        if evicted:
            EVICTED_STREAMS.inc(evicted)
            STATE_STREAMS.labels(partition=str(self.partition)).set(len(self.state))
        return evicted


class StateLoader:
    """Restores evicted sources from the bucket before their next point is classified."""

    def __init__(self, kv: Any) -> None:
        self._kv = kv

    async def load(self, state: ClassifierState, sources: Iterable[SourceKey]) -> int:
        """Read the documents of ``sources`` that are in the bucket but not in memory; the
        number of sources restored."""
        missing = [s for s in set(sources) if s in state.on_disk and s not in state.chunks]
        if not missing:
            return 0
        docs = await asyncio.gather(*(self._source_docs(s) for s in missing))
        now = time()
        for source, found in zip(missing, docs, strict=True):
            for doc in found:
                _restart_staleness(doc, now)
                state.restore_source(source, doc.covered, doc.states)
        return len(missing)

    async def _source_docs(self, source: SourceKey) -> list[SourceDoc]:
        key = f"{escape_key(source[0])}.{escape_key(source[1])}"
        first = await self._get(key)
        if first is None:
            return []
        rest = await asyncio.gather(*(self._get(f"{key}.{c}") for c in range(1, first.chunks)))
        return [first, *(doc for doc in rest if doc is not None)]

    async def _get(self, key: str) -> SourceDoc | None:
        try:
            entry = await self._kv.get(key)
        except Exception as exc:
            if "not found" in str(exc).lower() or type(exc).__name__ == "KeyNotFoundError":
                return None
            raise
        if not entry.value:
            return None
        return source_doc_from_json(entry.value)


def _restart_staleness(doc: SourceDoc, now: float) -> None:
    # Silence while no classifier held the stream is not the stream's: its clock restarts.
    for _, stream_state in doc.states:
        stream_state.seen_at = max(stream_state.seen_at, now)


class StateFollower(KvFollower):
    """Loads the bucket's checkpoints at start into the state of the partition each source
    belongs to (``state_of``; None: a partition this process does not own, skipped), and
    collects the alert events former documents still held as unacknowledged."""

    def __init__(self, kv: Any, state_of: Callable[[str, str], ClassifierState | None]) -> None:
        self._kv = kv
        self.state_of = state_of
        self.legacy_events: dict[str, LegacyEvent] = {}
        self.loaded = asyncio.Event()
        self._watcher: Any = None
        self._task: asyncio.Task[None] | None = None

    def apply(self, key: str, value: bytes | None, operation: str | None) -> None:
        if operation in _DELETE_OPERATIONS or not value:
            return  # a deleted checkpoint never rewinds the memory of a running classifier
        try:
            doc = source_doc_from_json(value)
        except Exception as exc:
            ERRORS.labels(stage="state_load", error_type=type(exc).__name__).inc()
            log.warning("ignoring an unreadable checkpoint", key=key, error=repr(exc)[:300])
            return
        state = self.state_of(*doc.source)
        if state is None:
            return
        _restart_staleness(doc, time())
        state.restore_source(doc.source, doc.covered, doc.states)
        for event in doc.legacy_events:
            self.legacy_events[event.msg_id] = event

    async def start(self, load_timeout: float) -> None:
        """Watch the bucket; return once its current content is applied (or TimeoutError)."""
        self._watcher = await self._kv.watchall()
        self._task = asyncio.create_task(self._follow(), name="classifier-state-watch")
        try:
            await asyncio.wait_for(self.loaded.wait(), load_timeout)
        finally:
            await self.stop()

    def _apply_entry(self, entry: Any) -> None:
        self.apply(entry.key, entry.value, entry.operation)

    def _apply_failed(self, entry: Any) -> None:
        log.exception("failed to apply a checkpoint", key=entry.key)
