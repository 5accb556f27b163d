"""The circuit breaker: opens after consecutive transient failures, closes when a probe works,
and tells its state in the CIRCUIT_OPEN gauge (no servers)."""

from __future__ import annotations

import asyncio

import structlog

from tests.writers import consumer_metrics
from tributary_runtime.breaker import CircuitBreaker


def breaker_with(probe: object, metrics: object, **kw: float) -> CircuitBreaker:
    return CircuitBreaker(probe, metrics, structlog.get_logger(), store="the store", **kw)  # type: ignore[arg-type]


async def test_transient_failures_open_the_breaker_and_a_working_probe_closes_it() -> None:
    store_up = False
    probes = 0

    async def probe() -> None:
        nonlocal probes
        probes += 1
        if not store_up:
            raise ConnectionRefusedError("down")

    metrics = consumer_metrics()
    breaker = breaker_with(probe, metrics, threshold=3, probe_min_seconds=0.01,
                           probe_max_seconds=0.02)
    breaker.failure("down")
    breaker.failure("down")
    assert not breaker.is_open and metrics.CIRCUIT_OPEN._value.get() == 0  # below the threshold
    breaker.failure("down")
    assert breaker.is_open and metrics.CIRCUIT_OPEN._value.get() == 1
    assert metrics.CIRCUIT_OPENED._value.get() == 1

    stopping = asyncio.Event()
    waiter = asyncio.create_task(breaker.wait_closed(stopping))
    await asyncio.sleep(0.1)
    assert not waiter.done() and probes >= 2  # probing, still down
    store_up = True
    await asyncio.wait_for(waiter, 2)
    assert not breaker.is_open and metrics.CIRCUIT_OPEN._value.get() == 0
    assert metrics.ERRORS.labels("probe", "ConnectionRefusedError")._value.get() >= 2
    await breaker.close()


async def test_a_success_starts_the_count_over() -> None:
    async def probe() -> None:
        return None

    breaker = breaker_with(probe, consumer_metrics(), threshold=2)
    for _ in range(5):
        breaker.failure("down")
        breaker.success()  # e.g. a permanent refusal: the store answered
    assert not breaker.is_open


async def test_wait_closed_returns_when_the_consumer_stops() -> None:
    async def probe() -> None:
        raise OSError("down")

    breaker = breaker_with(probe, consumer_metrics(), threshold=1, probe_min_seconds=10)
    breaker.failure("down")
    stopping = asyncio.Event()
    waiter = asyncio.create_task(breaker.wait_closed(stopping))
    stopping.set()
    await asyncio.wait_for(waiter, 1)
    assert breaker.is_open
    await breaker.close()
