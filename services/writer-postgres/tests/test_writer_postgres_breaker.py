"""The circuit breaker: opens after consecutive transient failures, closes when a probe works."""

from __future__ import annotations

import asyncio

import asyncpg

from writer_postgres.breaker import CircuitBreaker, GuardedStore


class FlakyStore:
    def __init__(self) -> None:
        self.fail_with: BaseException | None = None

    async def write_rows(self, rows: list[tuple[object, ...]]) -> int:
        if self.fail_with is not None:
            raise self.fail_with
        return len(rows)


async def test_transient_failures_open_the_breaker_and_a_working_probe_closes_it() -> None:
    database_up = False
    probes = 0

    async def probe() -> None:
        nonlocal probes
        probes += 1
        if not database_up:
            raise ConnectionRefusedError("down")

    breaker = CircuitBreaker(probe, threshold=3, probe_min_seconds=0.01, probe_max_seconds=0.02)
    store = FlakyStore()
    guarded = GuardedStore(store, breaker)
    store.fail_with = ConnectionRefusedError("connection refused")
    for _ in range(2):
        try:
            await guarded.write_rows([(1,)])
        except ConnectionRefusedError:
            pass
    assert not breaker.is_open  # two failures: still below the threshold
    try:
        await guarded.write_rows([(1,)])
    except ConnectionRefusedError:
        pass
    assert breaker.is_open

    stopping = asyncio.Event()
    waiter = asyncio.create_task(breaker.wait_closed(stopping))
    await asyncio.sleep(0.1)
    assert not waiter.done() and probes >= 2  # probing, still down
    database_up = True
    await asyncio.wait_for(waiter, 2)
    assert not breaker.is_open
    store.fail_with = None
    assert await guarded.write_rows([(1,), (2,)]) == 2
    await breaker.close()


async def test_permanent_errors_do_not_count_towards_opening() -> None:
    async def probe() -> None:
        return None

    breaker = CircuitBreaker(probe, threshold=2)
    guarded = GuardedStore(FlakyStore(), breaker)
    guarded._store.fail_with = asyncpg.exceptions.UntranslatableCharacterError("\\u0000")
    for _ in range(5):
        try:
            await guarded.write_rows([(1,)])
        except asyncpg.PostgresError:
            pass
    assert not breaker.is_open


async def test_wait_closed_returns_when_the_writer_stops() -> None:
    async def probe() -> None:
        raise OSError("down")

    breaker = CircuitBreaker(probe, threshold=1, probe_min_seconds=10)
    breaker.failure(OSError("down"))
    stopping = asyncio.Event()
    waiter = asyncio.create_task(breaker.wait_closed(stopping))
    stopping.set()
    await asyncio.wait_for(waiter, 1)
    assert breaker.is_open
    await breaker.close()
