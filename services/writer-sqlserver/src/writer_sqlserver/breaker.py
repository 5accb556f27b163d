"""Circuit breaker of the writer: stop fetching while the database keeps failing.

CLOSED: fetch and write. After ``threshold`` consecutive transient write failures → OPEN: no
fetch for ``open_seconds`` (messages wait on the stream instead of burning deliveries towards
the DLQ). Then HALF_OPEN: one fetch is tried; a successful commit closes the breaker, a failure
opens it again for another ``open_seconds``.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from enum import StrEnum


class BreakerState(StrEnum):
    CLOSED = "closed"
    OPEN = "open"
    HALF_OPEN = "half_open"


class CircuitBreaker:
    def __init__(
        self, threshold: int, open_seconds: float,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.threshold = threshold
        self.open_seconds = open_seconds
        self._clock = clock
        self._failures = 0
        self._opened_at: float | None = None

    @property
    def state(self) -> BreakerState:
        if self._opened_at is None:
            return BreakerState.CLOSED
        if self._clock() - self._opened_at >= self.open_seconds:
            return BreakerState.HALF_OPEN
        return BreakerState.OPEN

    def allow(self) -> bool:
        """May the writer fetch now? (HALF_OPEN allows the trial fetch.)"""
        return self.state is not BreakerState.OPEN

    def seconds_until_trial(self) -> float:
        if self._opened_at is None:
            return 0.0
        return max(0.0, self.open_seconds - (self._clock() - self._opened_at))

    def record_success(self) -> None:
        self._failures = 0
        self._opened_at = None

    def record_failure(self) -> None:
        """A transient write failure; opens at the threshold, re-opens after a failed trial."""
        self._failures += 1
        if self.state is BreakerState.HALF_OPEN or self._failures >= self.threshold:
            self._opened_at = self._clock()
