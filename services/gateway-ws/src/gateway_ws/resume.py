"""Where the last durably accepted sequence of each (domain, source) is kept, for ``resume``.

A KV bucket ``<prefix>_ws-resume`` (``WS_RESUME_BUCKET`` of ``libs/contracts``, created with the
other buckets by ``ensure_jetstream``), key ``<domain>.<source>`` (``escape_key``), value
``{"sequence": n, "session_id": "...", "updated_at": "..."}``, history 1.

A value is written only after JetStream acknowledged every point up to that sequence (and every
earlier message of the session), so it is never ahead of what is durable. Writes are coalesced —
at most one put in flight per session, always of the latest value — so the value may lag a little
behind the acks a client saw; resending from an older sequence is safe because the batches'
``Nats-Msg-Id`` and the writers' unique key drop the duplicates.
"""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import orjson
import structlog
from nats.js import JetStreamContext
from nats.js.errors import KeyNotFoundError
from nats.js.kv import KeyValue

from gateway_ws.metrics import ERRORS
from tributary_contracts import WS_RESUME_BUCKET, Namespace, escape_key
from tributary_runtime.publish import error_type

log = structlog.get_logger("gateway_ws.resume")


def resume_key(domain: str, source_id: str) -> str:
    return f"{escape_key(domain)}.{escape_key(source_id)}"


class ResumeStore:
    """Read and write the last durably accepted sequence per (domain, source)."""

    def __init__(self, kv: KeyValue) -> None:
        self._kv = kv

    @classmethod
    async def open(cls, js: JetStreamContext, ns: Namespace) -> ResumeStore:
        """The store on this namespace's bucket (``ensure_jetstream`` creates it)."""
        return cls(await js.key_value(ns.bucket(WS_RESUME_BUCKET)))

    async def last_sequence(self, domain: str, source_id: str) -> int | None:
        try:
            entry = await self._kv.get(resume_key(domain, source_id))
        except KeyNotFoundError:
            return None
        if not entry.value:
            return None
        sequence = orjson.loads(entry.value).get("sequence")
        return sequence if isinstance(sequence, int) else None

    async def put(self, domain: str, source_id: str, sequence: int, session_id: str) -> None:
        value = {
            "sequence": sequence,
            "session_id": session_id,
            "updated_at": datetime.now(UTC).isoformat(),
        }
        await self._kv.put(resume_key(domain, source_id), orjson.dumps(value))

    def tracker(self, domain: str, source_id: str, session_id: str) -> ResumeTracker:
        """The writer of ``session_id``'s resume record."""
        return ResumeTracker(self, domain, source_id, session_id)


class ResumeTracker:
    """One session's writer of the resume record: coalesces, never blocks the ack path."""

    def __init__(self, store: ResumeStore, domain: str, source_id: str, session_id: str) -> None:
        self._store = store
        self._domain = domain
        self._source_id = source_id
        self._session_id = session_id
        self._latest: int | None = None
        self._written: int | None = None
        self._task: asyncio.Task[None] | None = None

    def advance(self, sequence: int) -> None:
        """``sequence`` and everything sent before it is durable: record it (in the background)."""
        self._latest = sequence
        if self._task is None or self._task.done():
            self._task = asyncio.create_task(self._flush())

    async def _flush(self) -> None:
        while self._latest is not None and self._latest != self._written:
            value = self._latest
            try:
                await self._store.put(self._domain, self._source_id, value, self._session_id)
            except Exception as exc:  # the next advance (or close) tries again
                ERRORS.labels("resume_write", error_type(exc)).inc()
                log.warning("resume_write_failed", error=repr(exc), source_id=self._source_id)
                return
            self._written = value

    async def close(self, timeout: float) -> None:
        """Write the latest value (bounded by ``timeout``) before the session ends."""
        try:
            async with asyncio.timeout(timeout):
                if self._task is not None:
                    await self._task
                await self._flush()
        except TimeoutError:
            ERRORS.labels("resume_write", "timeout").inc()
