"""Rate limits: token buckets per client IP and per (domain, source), decided before accepting.

Every gateway uses one ``IngestLimiter``:

- ``admit(ip)`` — one token of the client IP's budget per request (HTTP), frame (WebSocket) or
  upload (CSV); refused → 429 with ``Retry-After``.
- ``admit_auth(ip)`` / ``auth_failed(ip)`` — a much smaller budget of *failed*
  authentications per client IP (default 1/s, burst 20), so a flood of bad keys is answered 429
  long before it reaches the request budget (which sits above what a gateway serves for 401s).
- ``admit_points(domain, source_id, live, backfill)`` — the points of one request/message, from
  the source's *live* budget, and those older than ``BACKFILL_AGE_SECONDS`` from its separate
  *backfill* budget, so a device flushing a day of buffered readings cannot starve its (or
  anyone's) live data. Both budgets are checked first and taken together, or not at all: a
  request is either accepted whole or refused whole with 429 before anything is published —
  never accepted and then dropped.

Buckets live in the process (each replica has its own budget: divide the limits by the replica
count, or put a shared limiter in front). Memory is bounded: beyond ``max_keys`` buckets, the
ones that have refilled completely (equivalent to new) are forgotten first, then the oldest.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta

from pydantic import BaseModel, Field


class RateLimitSettings(BaseModel):
    """The limits (mixed into each gateway's settings; env vars of the same names)."""

    rate_limit_enabled: bool = Field(
        default=True, description="Apply the rate limits below (false: no limit at all)."
    )
    rate_limit_ip_per_second: float = Field(
        default=1000.0,
        gt=0,
        description="Requests (HTTP), frames (WebSocket) or uploads (CSV) per second per client "
        "IP, sustained.",
    )
    rate_limit_ip_burst: float = Field(
        default=2000.0, ge=1, description="Most requests/frames a client IP may send at once."
    )
    rate_limit_source_points_per_second: float = Field(
        default=20_000.0, gt=0, description="Live points per second per (domain, source_id)."
    )
    rate_limit_source_burst: float = Field(
        default=40_000.0, ge=1, description="Most live points a source may send at once."
    )
    rate_limit_backfill_points_per_second: float = Field(
        default=5_000.0,
        gt=0,
        description="Backfill points (older than BACKFILL_AGE_SECONDS) per second per source.",
    )
    rate_limit_backfill_burst: float = Field(
        default=20_000.0, ge=1, description="Most backfill points a source may send at once."
    )
    rate_limit_auth_failures_per_second: float = Field(
        default=1.0,
        gt=0,
        description="Failed authentications (missing/bad API key) per second per client IP, "
        "sustained; beyond, the IP is answered 429 without checking its key.",
    )
    rate_limit_auth_failures_burst: float = Field(
        default=20.0, ge=1, description="Most failed authentications a client IP may make at once."
    )
    backfill_age_seconds: float = Field(
        default=300.0,
        gt=0,
        description="Points whose timestamp is older than this (vs receive time) are backfill.",
    )


@dataclass(frozen=True)
class Limit:
    rate: float  # tokens per second
    burst: float  # bucket size


class TokenBuckets:
    """Token buckets keyed by anything hashable, all with the same ``Limit``."""

    def __init__(
        self, limit: Limit, max_keys: int = 100_000, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.limit = limit
        self._max_keys = max_keys
        self._clock = clock
        self._buckets: dict[object, tuple[float, float]] = {}  # key → (tokens, at)

    def _level(self, key: object, now: float) -> float:
        state = self._buckets.get(key)
        if state is None:
            return self.limit.burst
        tokens, at = state
        return min(self.limit.burst, tokens + (now - at) * self.limit.rate)

    def wait(self, key: object, cost: float) -> float:
        """Seconds until ``cost`` tokens are there (0: now; inf: never, cost > burst)."""
        if cost <= 0:
            return 0.0
        if cost > self.limit.burst:
            return math.inf
        level = self._level(key, self._clock())
        return 0.0 if level >= cost else (cost - level) / self.limit.rate

    def take(self, key: object, cost: float) -> None:
        """Take ``cost`` tokens (call after ``wait`` said 0)."""
        if cost <= 0:
            return
        now = self._clock()
        level = self._level(key, now)
        self._buckets.pop(key, None)  # re-insert: dict order is then least recently used first
        self._buckets[key] = (level - cost, now)
        if len(self._buckets) > self._max_keys:
            self._prune(now)

    def try_take(self, key: object, cost: float) -> float:
        """``wait`` and, when it is 0, ``take`` (one clock read): the wait, 0 if taken."""
        if cost <= 0:
            return 0.0
        limit = self.limit
        if cost > limit.burst:
            return math.inf
        now = self._clock()
        state = self._buckets.pop(key, None)  # re-inserted below: least recently used first
        level = limit.burst if state is None else min(
            limit.burst, state[0] + (now - state[1]) * limit.rate
        )
        if level < cost:
            if state is not None:
                self._buckets[key] = state
            return (cost - level) / limit.rate
        self._buckets[key] = (level - cost, now)
        if len(self._buckets) > self._max_keys:
            self._prune(now)
        return 0.0

    def _prune(self, now: float) -> None:
        full = [k for k in self._buckets if self._level(k, now) >= self.limit.burst]
        for key in full:
            del self._buckets[key]
        while len(self._buckets) > self._max_keys:
            del self._buckets[next(iter(self._buckets))]

    def __len__(self) -> int:
        return len(self._buckets)


@dataclass(frozen=True)
class Refusal:
    """Why a request is refused: 429 (come back after ``retry_after`` s) or 413 (never fits)."""

    status: int
    reason: str
    retry_after: int  # whole seconds, ≥ 1

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)} if self.status == 429 else {}


def _retry_after(seconds: float) -> int:
    return max(1, math.ceil(seconds))


def split_backfill(
    timestamps: Iterable[datetime], received_at: datetime, backfill_age_seconds: float
) -> tuple[int, int]:
    """``(live, backfill)`` counts: backfill points are older than the age vs ``received_at``."""
    cutoff = received_at - timedelta(seconds=backfill_age_seconds)
    live = backfill = 0
    for ts in timestamps:
        if ts < cutoff:
            backfill += 1
        else:
            live += 1
    return live, backfill


class IngestLimiter:
    """The gateway's limits (see the module docstring). ``enabled=False`` admits everything."""

    def __init__(
        self, settings: RateLimitSettings, clock: Callable[[], float] = time.monotonic
    ) -> None:
        s = settings
        self.enabled = s.rate_limit_enabled
        self.backfill_age_seconds = s.backfill_age_seconds
        self.per_ip = TokenBuckets(Limit(s.rate_limit_ip_per_second, s.rate_limit_ip_burst),
                                   clock=clock)
        self.live = TokenBuckets(
            Limit(s.rate_limit_source_points_per_second, s.rate_limit_source_burst), clock=clock
        )
        self.backfill = TokenBuckets(
            Limit(s.rate_limit_backfill_points_per_second, s.rate_limit_backfill_burst),
            clock=clock,
        )
        self.auth_failures = TokenBuckets(
            Limit(s.rate_limit_auth_failures_per_second, s.rate_limit_auth_failures_burst),
            clock=clock,
        )

    async def spend_points(self, domain: str, source_id: str, live: int, backfill: int) -> float:
        """Take ``live`` + ``backfill`` points from the source's budgets, waiting for the tokens
        (at most a burst at a time): for work already accepted, such as a CSV import job, which
        then runs at the source's budget instead of being refused. Seconds waited."""
        if not self.enabled:
            return 0.0
        key = (domain, source_id)
        waited = 0.0
        for buckets, cost in ((self.live, live), (self.backfill, backfill)):
            while cost > 0:
                piece = min(cost, int(buckets.limit.burst))
                wait = buckets.wait(key, piece)
                if wait > 0:
                    await asyncio.sleep(wait)
                    waited += wait
                    continue
                buckets.take(key, piece)
                cost -= piece
        return waited

    def admit_auth(self, ip: str | None) -> Refusal | None:
        """The refusal when ``ip`` has used up its failed-authentication budget (checked before
        a key is looked at: guessing keys, or a client stuck on a bad one, costs one token
        bucket, not the key store and the audit trail), else None."""
        if not self.enabled:
            return None
        wait = self.auth_failures.wait(ip or "unknown", 1)
        if wait <= 0:
            return None
        limit = self.auth_failures.limit
        return Refusal(
            429,
            f"rate limit: more than {limit.rate:g} failed authentications/s (burst "
            f"{limit.burst:g}) from client address {ip or 'unknown'}; retry after "
            f"{_retry_after(wait)} s with a valid key",
            _retry_after(wait),
        )

    def auth_failed(self, ip: str | None) -> None:
        """Spend one token of ``ip``'s failed-authentication budget."""
        if self.enabled:
            self.auth_failures.take(ip or "unknown", 1)

    def admit(self, ip: str | None, what: str = "requests") -> Refusal | None:
        """One token of ``ip``'s budget, or the refusal."""
        if not self.enabled:
            return None
        key = ip or "unknown"
        wait = self.per_ip.try_take(key, 1)
        if wait > 0:
            limit = self.per_ip.limit
            return Refusal(
                429,
                f"rate limit: more than {limit.rate:g} {what}/s (burst {limit.burst:g}) from "
                f"client address {key}; retry after {_retry_after(wait)} s",
                _retry_after(wait),
            )
        return None

    def admit_points(
        self, domain: str, source_id: str, live: int, backfill: int
    ) -> Refusal | None:
        """Take ``live`` + ``backfill`` points of the source's budgets together, or refuse."""
        if not self.enabled:
            return None
        key = (domain, source_id)
        # The usual case, points of one kind within the budget: one bucket, one clock read.
        if backfill <= 0 and self.live.try_take(key, live) == 0:
            return None
        if live <= 0 and self.backfill.try_take(key, backfill) == 0:
            return None
        return self.admit_sources(domain, {source_id: (live, backfill)})

    def admit_sources(
        self, domain: str, counts: dict[str, tuple[int, int]]
    ) -> Refusal | None:
        """``admit_points`` for the sources of one request together (source → ``(live,
        backfill)``): every budget is checked first, then all are taken, or none."""
        if not self.enabled:
            return None
        backfill_name = f"backfill (older than {self.backfill_age_seconds:g} s)"
        worst: tuple[float, str, Limit, int, str] | None = None
        for source_id, (live, backfill) in counts.items():
            key = (domain, source_id)
            for name, buckets, cost in (
                ("live", self.live, live),
                (backfill_name, self.backfill, backfill),
            ):
                wait = buckets.wait(key, cost)
                if wait > 0 and (worst is None or wait > worst[0]):
                    worst = (wait, name, buckets.limit, cost, source_id)
        if worst is not None:
            wait, name, limit, cost, source_id = worst
            if math.isinf(wait):
                return Refusal(
                    413,
                    f"rate limit: {cost} {name} points in one request exceed the burst of "
                    f"{limit.burst:g} points per source; split the request",
                    1,
                )
            return Refusal(
                429,
                f"rate limit: source {source_id[:64]!r} in domain {domain!r} sends more than "
                f"{limit.rate:g} {name} points/s (burst {limit.burst:g}); nothing of this "
                f"request was accepted, retry after {_retry_after(wait)} s",
                _retry_after(wait),
            )
        for source_id, (live, backfill) in counts.items():
            self.live.take((domain, source_id), live)
            self.backfill.take((domain, source_id), backfill)
        return None
