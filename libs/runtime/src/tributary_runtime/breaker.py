"""The circuit breaker of a consumer whose store can go away: stop fetching while it is down,
resume by itself when it is back.

Without it every fetch during an outage is delivered, fails and is nakked: each message's
delivery count climbs with every round, and an outage longer than the nak backoff schedule
would dead-letter good messages (``max_deliver``) instead of storing them.

- **closed** (normal): the consume loops fetch. Every transient write failure is counted
  (``failure``), every write the store answered resets the count (``success``: a commit, or a
  permanent error, which says the store is up);
- after ``threshold`` consecutive transient failures it **opens**: the loops fetch nothing
  (``wait_closed``; messages wait on the stream, their delivery counts untouched) and one probe
  (a cheap query, e.g. ``SELECT 1``) runs after ``probe_min_seconds``, then at an interval
  doubling up to ``probe_max_seconds``;
- the first probe that succeeds **closes** it: the loops fetch again, and the nakked messages come
  back after their (short) delays. No operator action is needed either way.

Metrics (the consumer's metrics module, ``BreakerMetrics``): ``CIRCUIT_OPEN`` (gauge, 1 while
open), ``CIRCUIT_OPENED`` (times it opened), failed probes in ``ERRORS`` (stage ``probe``).
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from typing import Any, Protocol

from prometheus_client import Counter, Gauge

Probe = Callable[[], Awaitable[Any]]


class BreakerMetrics(Protocol):
    CIRCUIT_OPEN: Gauge
    CIRCUIT_OPENED: Counter
    ERRORS: Counter
    """Labels stage, error_type."""


class CircuitBreaker:
    """Counts consecutive transient failures; open ⇒ ``wait_closed`` blocks until a probe works."""

    def __init__(
        self, probe: Probe, metrics: BreakerMetrics, log: Any, *, store: str,
        threshold: int = 3, probe_min_seconds: float = 0.5, probe_max_seconds: float = 5.0,
    ) -> None:
        self._probe = probe
        self._metrics = metrics
        self._log = log
        self.store = store
        """What is probed, for log lines (``PostgreSQL``, ``SQL Server``)."""
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
        """The store answered (a commit, or a permanent refusal of the data)."""
        self._failures = 0

    def failure(self, error: str) -> None:
        """A transient write failure (``error``: one line for the log); opens at the threshold."""
        self._failures += 1
        if self._failures >= self.threshold and not self.is_open:
            self._closed.clear()
            self._metrics.CIRCUIT_OPEN.set(1)
            self._metrics.CIRCUIT_OPENED.inc()
            self._log.warning(f"{self.store} unavailable: circuit open, fetching paused",
                              failures=self._failures, error=error)
            self._prober = asyncio.create_task(self._probe_until_up(), name="breaker-probe")

    async def wait_closed(self, stopping: asyncio.Event) -> None:
        """Return when the breaker is closed (at once, normally) or the consumer is stopping."""
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
                self._metrics.ERRORS.labels("probe", type(exc).__name__).inc()
                delay = min(delay * 2, self.probe_max_seconds)
                continue
            self._failures = 0
            self._closed.set()
            self._metrics.CIRCUIT_OPEN.set(0)
            self._log.info(f"{self.store} reachable again: circuit closed, fetching resumed",
                           probes=attempts)
            return

    async def close(self) -> None:
        if self._prober is not None:
            self._prober.cancel()
            await asyncio.gather(self._prober, return_exceptions=True)
