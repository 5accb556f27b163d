"""Delivery rules of ClassifiedWriter when the database is unreachable or the DLQ refuses.

The database errors are real: an engine pointed at a closed port, once through psycopg2 (the
stand-in) and once through pyodbc + the FreeTDS ODBC driver (the SQL Server path, which fails
with SQLSTATE 08S01 before any server is involved). The messages are stand-ins for nats-py
``Msg`` that record how the writer settled them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import pytest
import structlog

from tests.writers import RecordingMsg, consumer_metrics
from tributary_contracts import DLQ_KIND, DLQ_REASON, MAX_DELIVER, PointClass, SinkRoutes
from tributary_runtime.breaker import CircuitBreaker
from writer_sqlserver.consume import ClassifiedWriter
from writer_sqlserver.database import build_engine
from writer_sqlserver.store import LegacyStore

from .conftest import build_batch, settings_for

CLOSED_PORT_DSNS = {  # port 9 (discard): refused
    "psycopg2": "postgresql://postgres@127.0.0.1:9/nowhere",
    "freetds": "mssql://sa:pw@127.0.0.1:9/nowhere",
}


REFUSAL = {
    "psycopg2": "OperationalError: connection to server at \"127.0.0.1\", port 9 failed",
    "freetds": "08S01: [08S01] [FreeTDS][SQL Server]Unable to connect: Adaptive Server is "
               "unavailable or does not exist",
}


@pytest.fixture(params=sorted(CLOSED_PORT_DSNS))
def driver(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def unreachable_store(driver: str) -> Iterator[LegacyStore]:
    dsn = CLOSED_PORT_DSNS[driver]
    engine = build_engine(settings_for(dsn, write_timeout_seconds=2))
    yield LegacyStore(engine)
    engine.dispose()


Letters = list[tuple[bytes, dict[str, str]]]


MakeWriter = Callable[..., ClassifiedWriter]


@pytest.fixture
async def writer() -> AsyncIterator[MakeWriter]:
    """Builds writers whose breaker never probes during a test (closed at the end)."""
    made: list[ClassifiedWriter] = []

    async def probe() -> None:
        raise ConnectionError("down")

    def make(store: LegacyStore, letters: Letters | None, threshold: int = 5) -> ClassifiedWriter:
        async def dead_letter(body: bytes, headers: dict[str, str]) -> None:
            if letters is None:
                raise ConnectionError("bus unavailable")
            letters.append((body, headers))

        breaker = CircuitBreaker(probe, consumer_metrics(), structlog.get_logger(),
                                 store="SQL Server", threshold=threshold, probe_min_seconds=60)
        made.append(ClassifiedWriter(
            store=store, routes=SinkRoutes.parse("iot=sqlserver"), dead_letter=dead_letter,
            breaker=breaker, backoff_seconds=0.5, backoff_max_seconds=30.0,
        ))
        return made[-1]

    yield make
    for w in made:
        assert w.breaker is not None
        await w.breaker.close()


def message(delivered: int = 1) -> RecordingMsg:
    body = build_batch([(17, 0, 1.0)], cls=PointClass.NORMAL).model_dump_json().encode()
    return RecordingMsg(body, num_delivered=delivered, subject="dp.classified.iot.normal.dev-0001")


async def test_unreachable_database_naks_with_growing_delay_and_opens_the_breaker(
    unreachable_store: LegacyStore, writer: MakeWriter
) -> None:
    w = writer(unreachable_store, [], threshold=2)
    assert w.breaker is not None
    first, third = message(1), message(3)
    await w.handle([first])
    assert not w.breaker.is_open
    await w.handle([third])
    assert (first.settled, third.settled) == ([("nak", 0.5)], [("nak", 2.0)])
    assert w.breaker.is_open


async def test_last_delivery_goes_to_the_dlq_instead_of_another_nak(
    unreachable_store: LegacyStore, driver: str, writer: MakeWriter
) -> None:
    letters: Letters = []
    msg = message(MAX_DELIVER)
    await writer(unreachable_store, letters).handle([msg])
    assert msg.settled == [("ack", None)]
    [(body, headers)] = letters
    assert body == msg.data
    assert headers[DLQ_KIND] == "max_deliver"
    assert headers[DLQ_REASON].startswith(
        f"gave up after {MAX_DELIVER} deliveries: {REFUSAL[driver]}")


async def test_message_is_not_acked_when_the_dlq_refuses_it(
    unreachable_store: LegacyStore, writer: MakeWriter
) -> None:
    msg = RecordingMsg(b"not json")
    await writer(unreachable_store, None).handle([msg])
    assert msg.settled == [("nak", 0.5)]


async def test_messages_of_other_sinks_never_touch_the_database(
    unreachable_store: LegacyStore, writer: MakeWriter
) -> None:
    other = RecordingMsg(build_batch([(1, 0, 1.0)], domain="finance").model_dump_json().encode())
    w = writer(unreachable_store, [], threshold=1)
    await w.handle([other])
    assert other.settled == [("ack", None)]
    assert w.breaker is not None and not w.breaker.is_open
