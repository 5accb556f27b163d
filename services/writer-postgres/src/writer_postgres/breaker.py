"""Circuit breaker: stop fetching while PostgreSQL is down, resume by itself when it is back.

Without it, every fetch during an outage is delivered, fails and is nakked: each message's
delivery count climbs with every round, and an outage longer than the nak backoff schedule
(about four minutes) would dead-letter acknowledged points (``max_deliver``) instead of storing
them. With it, after ``threshold`` consecutive transient write failures the breaker *opens*: the
consume loops stop fetching (messages wait on the stream, their delivery counts untouched) and
one probe (``SELECT 1``) runs with a growing interval. When a probe succeeds the breaker closes
and the loops fetch again; the nakked messages come back after their (short) delays. No operator
action is needed either way.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import Any

import structlog

from writer_postgres import metrics
from writer_postgres.errors import Failure, classify_error, describe_error

log = structlog.get_logger(__name__)

Probe = Callable[[], Awaitable[Any]]


class CircuitBreaker:
    """Counts consecutive transient failures; open ⇒ ``wait_closed`` blocks until a probe works."""

    def __init__(
        self, probe: Probe, threshold: int = 3, probe_min_seconds: float = 0.5,
        probe_max_seconds: float = 5.0,
    ) -> None:
        self._probe = probe
        self.threshold = threshold
        self.probe_min_seconds = probe_min_seconds
        self.probe_max_seconds = probe_max_seconds
        self._failures = 0
        self._closed = asyncio.Event()
        self._closed.set()
        self._prober: asyncio.Task[None] | None = None
        metrics.CIRCUIT_OPEN.set(0)

    @property
    def is_open(self) -> bool:
        return not self._closed.is_set()

    def success(self) -> None:
        self._failures = 0

    def failure(self, exc: BaseException) -> None:
        """A write failed: count it when transient (a permanent one says the database is up)."""
        if classify_error(exc) is Failure.PERMANENT:
            self._failures = 0
            return
        self._failures += 1
        if self._failures >= self.threshold and not self.is_open:
            self._closed.clear()
            metrics.CIRCUIT_OPEN.set(1)
            metrics.CIRCUIT_OPENED.inc()
            log.warning("PostgreSQL unavailable: circuit open, fetching paused",
                        failures=self._failures, error=describe_error(exc))  # fmt: skip
            self._prober = asyncio.create_task(self._probe_until_up(), name="breaker-probe")

    async def wait_closed(self, stopping: asyncio.Event) -> None:
        """Return when the breaker is closed (at once, normally) or the writer is stopping."""
        if self._closed.is_set():
            return
        stop = asyncio.create_task(stopping.wait())
        closed = asyncio.create_task(self._closed.wait())
        try:
            await asyncio.wait((stop, closed), return_when=asyncio.FIRST_COMPLETED)
        finally:
            stop.cancel()
            closed.cancel()

    async def _probe_until_up(self) -> None:
        delay = self.probe_min_seconds
        attempts = 0
        while True:
            await asyncio.sleep(delay)
            attempts += 1
            try:
                await self._probe()
            except Exception as exc:
                metrics.ERRORS.labels("probe", type(exc).__name__).inc()
                delay = min(delay * 2, self.probe_max_seconds)
                continue
            self._failures = 0
            self._closed.set()
            metrics.CIRCUIT_OPEN.set(0)
            log.info("PostgreSQL reachable again: circuit closed, fetching resumed",
                     probes=attempts)  # fmt: skip
            return

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)


class GuardedStore:
    """A store whose writes report to the breaker (success / failure), otherwise unchanged."""

    def __init__(self, store: Any, breaker: CircuitBreaker) -> None:
        self._store = store
        self._breaker = breaker

    async def write_rows(self, rows: Sequence[Any]) -> int:
        try:
            inserted = int(await self._store.write_rows(rows))
        except Exception as exc:
            self._breaker.failure(exc)
            raise
        self._breaker.success()
        return inserted

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)
