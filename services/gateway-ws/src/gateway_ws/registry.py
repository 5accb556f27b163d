"""Every session of this process: the per-key limit, one session per (domain, source), drain."""

from __future__ import annotations

import asyncio

from gateway_ws.metrics import SESSIONS_OPEN
from gateway_ws.protocol import CloseCode, ErrorCode, ProtocolError
from gateway_ws.session import Session


class SessionRegistry:
    """Sessions of one process. Limits hold per process (per replica), not fleet-wide."""

    def __init__(self, max_sessions_per_key: int) -> None:
        self._max_per_key = max_sessions_per_key
        self.sessions: set[Session] = set()
        self._per_key: dict[str, int] = {}
        self._by_source: dict[tuple[str, str], Session] = {}
        self.draining = False

    def add(self, session: Session) -> None:
        self.sessions.add(session)

    def discard(self, session: Session) -> None:
        self.sessions.discard(session)

    def claim(self, session: Session, key_id: str) -> Session | ProtocolError | None:
        """Count ``session`` against its key; return the session of its source it replaces."""
        source = (session.domain, session.source_id)
        previous = self._by_source.get(source)
        held = self._per_key.get(key_id, 0)
        # A reconnect that replaces its own source's session does not need a second slot.
        frees_one = previous is not None and previous.key_id == key_id
        if held - frees_one >= self._max_per_key:
            return ProtocolError(
                ErrorCode.TOO_MANY_SESSIONS,
                f"this API key already holds {held} sessions (max {self._max_per_key}); "
                "close one or retry later",
            )
        self._per_key[key_id] = held + 1
        self._by_source[source] = session
        SESSIONS_OPEN.inc()
        return previous

    def release(self, session: Session) -> None:
        """Undo ``claim`` when the session has ended."""
        assert session.key_id is not None
        left = self._per_key.get(session.key_id, 1) - 1
        if left > 0:
            self._per_key[session.key_id] = left
        else:
            self._per_key.pop(session.key_id, None)
        source = (session.domain, session.source_id)
        if self._by_source.get(source) is session:
            del self._by_source[source]
        SESSIONS_OPEN.dec()

    async def drain(self, timeout: float) -> int:
        """Stop every session with 1001 "going away" after it acked what is durable; wait up to
        ``timeout``. Returns how many sessions had not finished by then."""
        self.draining = True
        sessions = list(self.sessions)
        for session in sessions:
            session.stop(CloseCode.GOING_AWAY, "going away")
        if not sessions:
            return 0
        waits = [asyncio.create_task(s.finished.wait()) for s in sessions]
        _, pending = await asyncio.wait(waits, timeout=timeout)
        for task in pending:
            task.cancel()
        return len(pending)
