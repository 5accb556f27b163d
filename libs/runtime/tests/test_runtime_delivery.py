"""tributary_runtime.delivery: how a consumer settles a message (ack, nak with backoff,
dead letter), with recording stand-ins for the message and the DLQ publish (no servers)."""

from __future__ import annotations

from typing import Any

import structlog

from tests.writers import RecordingMsg, consumer_metrics
from tributary_contracts import (
    DLQ_CONSUMER,
    DLQ_DELIVERIES,
    DLQ_KIND,
    DLQ_REASON,
    DLQ_SUBJECT,
    MAX_DELIVER,
    MSG_ID_HEADER,
    Namespace,
)
from tributary_runtime.delivery import Settler, backoff_delay, dead_letter

Letters = list[tuple[bytes, dict[str, str]]]


def settler(letters: Letters | None) -> tuple[Settler, Any]:
    """A Settler whose DLQ records the letters (None: the DLQ refuses every one)."""

    async def publish(body: bytes, headers: dict[str, str]) -> None:
        if letters is None:
            raise ConnectionError("bus unavailable")
        letters.append((body, headers))

    metrics = consumer_metrics()
    log = structlog.get_logger()
    return Settler("writer-test", publish, metrics, log, repr, 0.5, 30.0), metrics


def test_backoff_doubles_from_the_base_up_to_the_cap() -> None:
    assert [backoff_delay(n, 0.5, 30.0) for n in (1, 2, 3, 4, 7, 8, 100)] == [
        0.5, 1.0, 2.0, 4.0, 30.0, 30.0, 30.0
    ]


async def test_a_transient_failure_naks_with_the_backoff_of_the_delivery_count() -> None:
    s, metrics = settler([])
    first, third = RecordingMsg(b"x"), RecordingMsg(b"y", num_delivered=3)
    await s.retry(first, 1, ConnectionError("down"))
    await s.retry(third, 3, ConnectionError("down"))
    assert (first.settled, third.settled) == ([("nak", 0.5)], [("nak", 2.0)])
    assert metrics.MESSAGES_NAKKED._value.get() == 2


async def test_the_last_delivery_is_dead_lettered_and_acked_instead_of_nakked() -> None:
    letters: Letters = []
    s, metrics = settler(letters)
    msg = RecordingMsg(b"payload", num_delivered=MAX_DELIVER)
    await s.retry(msg, MAX_DELIVER, ConnectionError("down"))
    assert msg.settled == [("ack", None)]
    [(body, headers)] = letters
    assert body == b"payload"
    assert (headers[DLQ_KIND], headers[DLQ_CONSUMER], headers[DLQ_SUBJECT],
            headers[DLQ_DELIVERIES]) == ("max_deliver", "writer-test", msg.subject, "10")
    assert headers[DLQ_REASON] == f"gave up after {MAX_DELIVER} deliveries: ConnectionError('down')"
    assert metrics.DLQ.labels("max_deliver")._value.get() == 1


async def test_a_message_is_nakked_not_acked_when_its_dead_letter_is_refused() -> None:
    s, metrics = settler(None)
    msg = RecordingMsg(b"not json")
    await s.reject(msg, "invalid_message", "invalid", 1)
    assert msg.settled == [("nak", 0.5)]
    assert metrics.ERRORS.labels("dlq", "ConnectionError")._value.get() == 1


async def test_a_dead_letter_identified_by_its_points_has_the_same_id_whatever_its_body() -> None:
    letters: Letters = []
    s, _ = settler(letters)
    msg = RecordingMsg(b"bundle")
    for body in (b"one composition", b"another composition"):
        assert await s.dead_letter(msg, "bad_rows", "22P05: bad", 1, body=body, identity="pts")
    assert [b for b, _ in letters] == [b"one composition", b"another composition"]
    assert letters[0][1][MSG_ID_HEADER] == letters[1][1][MSG_ID_HEADER]


async def test_a_defect_inside_a_fetch_naks_only_what_is_not_settled_yet() -> None:
    s, metrics = settler([])
    done, pending = RecordingMsg(b"a"), RecordingMsg(b"b", num_delivered=2)

    async def work() -> None:
        await s.ack(done)
        raise RuntimeError("a defect")

    await s.handle([done, pending], work())  # the defect is counted and logged, not raised
    assert (done.settled, pending.settled) == ([("ack", None)], [("nak", 1.0)])
    assert metrics.ERRORS.labels("handle", "RuntimeError")._value.get() == 1


def test_the_classifier_dead_letter_keeps_the_payload_and_goes_to_its_dlq_subject() -> None:
    ns = Namespace("tx")
    msg = RecordingMsg(b"raw bundle", subject="tx.dp.raw.iot.part.0")
    letter = dead_letter(ns, "classifier", msg, "invalid_batch", "points.0.value: bad", 1)
    assert (letter.subject, letter.payload, letter.stream) == (
        ns.dlq_subject("classifier"), b"raw bundle", ns.stream("DP_DLQ"))
    assert (letter.headers[DLQ_KIND], letter.headers[DLQ_SUBJECT]) == (
        "invalid_batch", "tx.dp.raw.iot.part.0")
