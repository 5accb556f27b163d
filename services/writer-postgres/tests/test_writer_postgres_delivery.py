"""Delivery rules of ClassifiedWriter when the database is unreachable or the DLQ refuses.

The database errors are real (a pool pointed at a closed port); the messages are stand-ins
for nats-py ``Msg`` that record how the writer settled them.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import asyncpg
import pytest

from tests.writers import RecordingMsg
from tributary_contracts import DLQ_KIND, DLQ_REASON, MAX_DELIVER, SinkRoutes
from writer_postgres.consume import ClassifiedWriter
from writer_postgres.store import PointStore

CLOSED_PORT_DSN = "postgresql://postgres@127.0.0.1:9/nowhere"  # port 9 (discard): refused


@pytest.fixture
async def unreachable_store() -> AsyncIterator[PointStore]:
    pool = await asyncpg.create_pool(CLOSED_PORT_DSN, min_size=0, max_size=1)
    yield PointStore(pool, timeout=2)
    await pool.close()


Letters = list[tuple[bytes, dict[str, str]]]


def writer(store: PointStore, letters: Letters | None) -> ClassifiedWriter:
    async def dead_letter(body: bytes, headers: dict[str, str]) -> None:
        if letters is None:
            raise ConnectionError("bus unavailable")
        letters.append((body, headers))

    return ClassifiedWriter(
        store=store, routes=SinkRoutes.parse("*=postgres"), dead_letter=dead_letter,
        backoff_seconds=0.5, backoff_max_seconds=30.0,
    )


async def test_unreachable_database_naks_every_message_with_growing_delay(
    unreachable_store: PointStore, make_batch: Any
) -> None:
    letters: Letters = []
    first = RecordingMsg(make_batch(2).model_dump_json().encode(), num_delivered=1)
    third = RecordingMsg(make_batch(2, source_id="b").model_dump_json().encode(), num_delivered=3)
    await writer(unreachable_store, letters).handle([first, third])
    assert (first.settled, third.settled, letters) == ([("nak", 0.5)], [("nak", 2.0)], [])


async def test_last_delivery_goes_to_the_dlq_instead_of_another_nak(
    unreachable_store: PointStore, make_batch: Any
) -> None:
    letters: Letters = []
    body = make_batch(2).model_dump_json().encode()
    last = RecordingMsg(body, num_delivered=MAX_DELIVER)
    await writer(unreachable_store, letters).handle([last])
    assert last.settled == [("ack", None)]
    assert [(b, h[DLQ_KIND]) for b, h in letters] == [(body, "max_deliver")]
    assert letters[0][1][DLQ_REASON].startswith(f"gave up after {MAX_DELIVER} deliveries: ")


async def test_message_is_not_acked_when_the_dlq_refuses_it(
    unreachable_store: PointStore,
) -> None:
    garbage = RecordingMsg(b"\xff\xfe not json", num_delivered=2)
    await writer(unreachable_store, None).handle([garbage])
    assert garbage.settled == [("nak", 1.0)]


async def test_messages_of_other_sinks_and_invalid_ones_never_touch_the_database(
    unreachable_store: PointStore, make_batch: Any
) -> None:
    letters: Letters = []
    iot = RecordingMsg(make_batch(1, domain="iot").model_dump_json().encode())
    garbage = RecordingMsg(b"[]")
    w = writer(unreachable_store, letters)
    w.routes = SinkRoutes.parse("iot=sqlserver,*=postgres")
    await w.handle([iot, garbage])
    assert (iot.settled, garbage.settled) == ([("ack", None)], [("ack", None)])
    assert [h[DLQ_KIND] for _, h in letters] == ["invalid_message"]
