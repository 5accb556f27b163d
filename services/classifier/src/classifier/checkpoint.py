"""State checkpoints in the ``classifier-state`` KV bucket, one document per source: written,
loaded, followed.

Documents: the streams of one ``(domain, source_id)`` are checkpointed together, in one JSON
document under ``<escape_key(domain)>.<escape_key(source_id)>`` holding every stream's state
(latest points, runs, open and staleness alerts, last close time, pending events). A source with
more than ``CHUNK_STREAMS`` streams is split into several documents (``….1``, ``….2``, … in the
order this process first saw its streams), which keeps each one far below the max payload. An
input batch is one source, so it costs at most one checkpoint write (one per chunk it touches
for those very large sources). Since a document replaces a stream's memory only when it is more
recent (``ClassifierState.restore``), an older copy of a stream left in another chunk (after a
restart the order of first sight may differ) is harmless.

Writing, exact part: the document of a source whose run of violations or alert an input changed
is written together with that input's outputs (``writes_of``: one more message in the same
``publish_async`` group), and the input is acked only when all of them are acked. The body is
made when the message is sent (the source's state at that moment), so whichever write of a
document is sent last holds its newest state. Writing the checkpoint alongside the outputs rather
than after them is safe because alert events stay in the state as ``pending`` until acked: if the
checkpoint lands and an event does not, the redelivered input's points are duplicates for the
stream and its pending events are published again (same ``Nats-Msg-Id``).

Writing, lazy part: streams whose only change is their latest point (``ClassifierState.dirty``)
are written by ``flush_dirty`` every ``CHECKPOINT_INTERVAL_SECONDS`` (``save_docs``:
group-committed rounds, each document once per round); any write of a document clears the dirty
mark of all its streams. The cost: after a crash, the first point of a stream compares its rates
with a latest point up to that interval old, and duplicates of acknowledged normal points of that
interval count as new (they are normal, so no counter or alert changes).
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from time import time
from typing import Any

import structlog

from classifier.metrics import CHECKPOINT_WRITES, ERRORS
from classifier.outbox import Outbox, Outgoing
from classifier.state import (
    ClassifierState,
    DocKey,
    StreamKey,
    source_doc_from_json,
    source_doc_json,
    source_doc_key,
)
from tributary_runtime.kvwatch import KvFollower

log = structlog.get_logger(__name__)

_DELETE_OPERATIONS = ("DEL", "PURGE")


def kv_put_subject(bucket: str, key: str) -> str:
    """Subject of a put of ``key`` into KV bucket ``bucket`` (NATS KV protocol)."""
    return f"$KV.{bucket}.{key}"


def kv_stream(bucket: str) -> str:
    """JetStream stream behind KV bucket ``bucket`` (NATS KV protocol)."""
    return f"KV_{bucket}"


class Checkpointer:
    """Writes the checkpoint documents of touched sources to the bucket."""

    def __init__(self, outbox: Outbox, state: ClassifierState, bucket: str) -> None:
        self.outbox = outbox
        self.state = state
        self.bucket = bucket
        self._stream = kv_stream(bucket)
        self._waiting: set[DocKey] = set()
        self._next: asyncio.Future[bool] | None = None
        self._task: asyncio.Task[None] | None = None

    def write_of_doc(self, doc: DocKey) -> Outgoing:
        """The KV put of document ``doc``, its body made when it is sent."""
        state = self.state

        def body() -> bytes:
            domain, source_id, _ = doc
            stream_ids = state.doc_streams(doc)
            dirty = state.dirty
            if dirty:
                for stream_id in stream_ids:
                    dirty.discard((domain, source_id, stream_id))
            return source_doc_json(doc, stream_ids, state.streams)

        subject = kv_put_subject(self.bucket, source_doc_key(doc))
        return Outgoing(subject, body, {}, self._stream, coalesce=subject)

    def docs_of(self, keys: Iterable[StreamKey]) -> set[DocKey]:
        """The checkpoint documents holding ``keys`` (one for a source of ≤ CHUNK_STREAMS)."""
        doc_of = self.state.doc_of
        return {doc_of[key] for key in keys if key in doc_of}

    def writes_of(self, keys: Iterable[StreamKey]) -> list[Outgoing]:
        """The KV puts that checkpoint ``keys``: one per document holding any of them."""
        return [self.write_of_doc(doc) for doc in self.docs_of(keys)]

    async def save(self, keys: Iterable[StreamKey]) -> bool:
        """Write the documents holding ``keys``; True once every write is acked."""
        return await self.save_docs(self.docs_of(keys))

    async def save_docs(self, docs: set[DocKey]) -> bool:
        """Write ``docs`` in group-committed rounds; True once every write is acked."""
        if not docs:
            return True
        if self._next is None:
            self._next = asyncio.get_running_loop().create_future()
        self._waiting |= docs
        round_done = self._next
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._rounds(), name="classifier-checkpoint")
        return await asyncio.shield(round_done)

    async def flush_dirty(self, limit: int = 10_000) -> int:
        """Write up to ``limit`` documents holding streams whose latest point moved since their
        last checkpoint; the number of documents."""
        dirty = self.state.dirty
        if not dirty:
            return 0
        doc_of = self.state.doc_of
        docs: set[DocKey] = set()
        for key in list(dirty):
            doc = doc_of.get(key)
            if doc is None:
                dirty.discard(key)
                continue
            docs.add(doc)
            if len(docs) >= limit:
                break
        if not await self.save_docs(docs):
            for domain, source_id, chunk in docs:  # retried by the next flush
                for stream_id in self.state.doc_streams((domain, source_id, chunk)):
                    dirty.add((domain, source_id, stream_id))
        return len(docs)

    async def _rounds(self) -> None:
        while self._waiting:
            await asyncio.sleep(0)  # let the other handler calls of this fetch join the round
            docs, done = self._waiting, self._next
            self._waiting, self._next = set(), None
            assert done is not None
            ok = False
            try:
                ok = await self._write(docs)
            except Exception as exc:  # a defect: report it as a failed round, never hang
                ERRORS.labels(stage="checkpoint", error_type=type(exc).__name__).inc()
                log.exception("checkpoint round failed")
            finally:
                if not done.done():
                    done.set_result(ok)

    async def _write(self, docs: set[DocKey]) -> bool:
        messages = [self.write_of_doc(doc) for doc in docs]
        if not messages:
            return True
        results = await self.outbox.publish_all(messages)
        failed = [e for e in results if e is not None]
        CHECKPOINT_WRITES.inc(len(messages) - len(failed))
        if failed:
            ERRORS.labels(stage="checkpoint", error_type=type(failed[0]).__name__).inc()
            log.warning(
                "checkpoint write failed; inputs will be redelivered",
                failed=len(failed),
                error=repr(failed[0]),
            )
        return not failed


class StateFollower(KvFollower):
    """Loads the bucket's checkpoints at start into the state of the partition each source
    belongs to (``state_of``; None: a partition this process does not own, skipped)."""

    def __init__(self, kv: Any, state_of: Callable[[str, str], ClassifierState | None]) -> None:
        self._kv = kv
        self.state_of = state_of
        self.loaded = asyncio.Event()
        self._watcher: Any = None
        self._task: asyncio.Task[None] | None = None

    def apply(self, key: str, value: bytes | None, operation: str | None) -> None:
        if operation in _DELETE_OPERATIONS or not value:
            return  # a deleted checkpoint never rewinds the memory of a running classifier
        try:
            restored = source_doc_from_json(value)
        except Exception as exc:
            ERRORS.labels(stage="state_load", error_type=type(exc).__name__).inc()
            log.warning("ignoring an unreadable checkpoint", key=key, error=repr(exc)[:300])
            return
        now = time()
        for ids, stream_state in restored:
            state = self.state_of(ids[0], ids[1])
            if state is None:
                continue
            # Silence while no classifier ran is not the stream's: its staleness clock restarts.
            stream_state.seen_at = max(stream_state.seen_at, now)
            state.restore(ids, stream_state)

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
