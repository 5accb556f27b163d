"""Alert lifecycle events → stream_alerts: the merge rules (real PostgreSQL), the delivery rules
(fake messages), and the running writer's alerts loop (real NATS + PostgreSQL)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

import asyncpg
import pytest

from tributary_contracts import (
    DLQ_CONSUMER,
    DLQ_KIND,
    DLQ_SUBJECT,
    DP_DLQ,
    DP_EVENTS,
    MAX_DELIVER,
    MSG_ID_HEADER,
    WRITER_POSTGRES_ALERTS_DURABLE,
    AlertEvent,
    AlertEventKind,
    Namespace,
    PointClass,
)
from writer_postgres.alerts import OPEN_ALERTS, AlertStore, AlertWriter

T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)


def alert_event(
    event: AlertEventKind = AlertEventKind.OPENED,
    *,
    alert_id: str = "a-1",
    source_id: str = "server-01",
    stream_id: str = "cpu_usage",
    severity: PointClass = PointClass.WARNING,
    count: int = 3,
    closed: bool = False,
    emitted: int = 0,
) -> AlertEvent:
    """An alert that opened after 3 points over 80 (one second apart); ``count`` violations."""
    return AlertEvent(
        event=event,
        alert_id=alert_id,
        domain="infrastructure",
        source_id=source_id,
        stream_id=stream_id,
        severity=severity,
        rule="warning_zone",
        reason=f"value {84 + count} is at or above the warning maximum 80",
        first_value=85.0,
        first_at=T0,
        last_value=84.0 + count,
        last_at=T0 + timedelta(seconds=count - 1),
        peak_value=max(87.0, 84.0 + count),
        violation_count=count,
        opened_at=T0 + timedelta(seconds=2),
        closed_at=T0 + timedelta(seconds=count) if closed else None,
        config_version=7,
        emitted_at=T0 + timedelta(minutes=1, seconds=emitted),
    )


def closed_event(**kwargs: Any) -> AlertEvent:
    return alert_event(AlertEventKind.CLOSED, closed=True, **kwargs)


async def alert_rows(dsn: str) -> list[dict[str, Any]]:
    conn = await asyncpg.connect(dsn)
    try:
        records = await conn.fetch("SELECT * FROM stream_alerts ORDER BY alert_id")
    finally:
        await conn.close()
    return [dict(r) for r in records]


def expected_row(event: AlertEvent) -> dict[str, Any]:
    return {
        "alert_id": event.alert_id, "domain": event.domain, "source_id": event.source_id,
        "stream_id": event.stream_id, "severity": event.severity.value,
        "status": "closed" if event.event is AlertEventKind.CLOSED else "open",
        "rule": event.rule, "reason": event.reason, "config_version": event.config_version,
        "opened_at": event.opened_at, "closed_at": event.closed_at,
        "first_value": event.first_value, "first_at": event.first_at,
        "last_value": event.last_value, "last_at": event.last_at,
        "peak_value": event.peak_value, "violation_count": event.violation_count,
        "last_event": event.event.value, "emitted_at": event.emitted_at,
    }


def without_bookkeeping(row: dict[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in row.items() if k not in ("id", "updated_at", "metadata")}


# -- merge rules against the real PostgreSQL --------------------------------------------------
@pytest.fixture
async def store(migrated_dsn: str) -> Any:
    pool = await asyncpg.create_pool(migrated_dsn, min_size=1, max_size=2)
    yield AlertStore(pool)
    await pool.close()


@pytest.mark.integration
async def test_an_opened_event_makes_one_open_row(store: AlertStore, migrated_dsn: str) -> None:
    opened = alert_event()
    assert await store.apply([opened]) == 1
    [row] = await alert_rows(migrated_dsn)
    assert without_bookkeeping(row) == expected_row(opened)


@pytest.mark.integration
async def test_a_redelivered_event_changes_nothing(store: AlertStore, migrated_dsn: str) -> None:
    await store.apply([alert_event()])
    before = await alert_rows(migrated_dsn)
    assert await store.apply([alert_event(), alert_event()]) == 0
    assert await alert_rows(migrated_dsn) == before  # updated_at included


@pytest.mark.integration
async def test_closed_moves_the_row_to_closed_with_the_final_figures(
    store: AlertStore, migrated_dsn: str
) -> None:
    await store.apply([alert_event()])
    closed = closed_event(count=5, emitted=9)
    assert await store.apply([closed]) == 1
    [row] = await alert_rows(migrated_dsn)
    assert without_bookkeeping(row) == expected_row(closed)
    assert (row["status"], row["violation_count"], row["peak_value"]) == ("closed", 5, 89.0)


@pytest.mark.integration
async def test_closed_before_opened_still_ends_closed(store: AlertStore, migrated_dsn: str) -> None:
    closed = closed_event(count=4, emitted=5)
    await store.apply([closed])
    assert await store.apply([alert_event()]) == 0  # the late "opened" is older: ignored
    [row] = await alert_rows(migrated_dsn)
    assert without_bookkeeping(row) == expected_row(closed)


@pytest.mark.integration
async def test_a_closed_alert_never_reopens(store: AlertStore, migrated_dsn: str) -> None:
    await store.apply([closed_event(count=3)])
    # even an "opened" that looks further along (more violations) cannot reopen it
    await store.apply([alert_event(count=9, emitted=30)])
    [row] = await alert_rows(migrated_dsn)
    assert row["status"] == "closed" and row["violation_count"] == 3


@pytest.mark.integration
async def test_escalation_closes_the_warning_and_opens_a_critical_alert(
    store: AlertStore, migrated_dsn: str
) -> None:
    await store.apply([alert_event(alert_id="w-1")])
    await store.apply(
        [
            closed_event(alert_id="w-1", count=4, emitted=4),
            alert_event(AlertEventKind.ESCALATED, alert_id="c-1",
                        severity=PointClass.CRITICAL, count=1, emitted=4),
        ]
    )
    rows = {r["alert_id"]: r for r in await alert_rows(migrated_dsn)}
    assert (rows["w-1"]["status"], rows["w-1"]["severity"]) == ("closed", "warning")
    assert (rows["c-1"]["status"], rows["c-1"]["severity"]) == ("open", "critical")
    assert rows["c-1"]["last_event"] == "escalated"


@pytest.mark.integration
async def test_open_alerts_query_lists_only_open_alerts_through_the_partial_index(
    store: AlertStore, migrated_dsn: str
) -> None:
    await store.apply([alert_event(alert_id="a-1", source_id="s1")])
    await store.apply([alert_event(alert_id="a-2", source_id="s2"),
                       closed_event(alert_id="a-2", source_id="s2")])
    await store.apply([alert_event(alert_id="a-3", source_id="s3")])

    conn = await asyncpg.connect(migrated_dsn)
    try:
        open_now = await conn.fetch(OPEN_ALERTS)
        await conn.execute("SET enable_seqscan = off")  # a tiny table: ask what the index serves
        plan = "\n".join(r[0] for r in await conn.fetch("EXPLAIN " + OPEN_ALERTS))
    finally:
        await conn.close()
    assert [r["alert_id"] for r in open_now] == ["a-1", "a-3"]
    assert "stream_alerts_open" in plan


# -- delivery rules on fake messages -----------------------------------------------------------
@dataclass
class FakeMsg:
    data: bytes
    subject: str = "dp.alert.infrastructure.warning.server-01"
    delivered: int = 1
    log: list[str] = field(default_factory=list)

    @property
    def metadata(self) -> Any:
        return type("Meta", (), {"num_delivered": self.delivered})()

    async def ack(self) -> None:
        self.log.append("ack")

    async def nak(self, delay: float | None = None) -> None:
        self.log.append("nak")


class FakeStore:
    def __init__(self, fail: Callable[[list[AlertEvent]], Exception | None]) -> None:
        self.fail = fail
        self.applied: list[AlertEvent] = []

    async def apply(self, events: list[AlertEvent]) -> int:
        exc = self.fail(events)
        if exc is not None:
            raise exc
        self.applied += events
        return len(events)


def writer(store: Any) -> tuple[AlertWriter, list[tuple[bytes, dict[str, str]]]]:
    letters: list[tuple[bytes, dict[str, str]]] = []

    async def dead_letter(body: bytes, headers: dict[str, str]) -> None:
        letters.append((body, headers))

    return AlertWriter(store=store, dead_letter=dead_letter), letters


async def test_an_invalid_event_is_dead_lettered_whole_and_the_valid_ones_applied() -> None:
    store = FakeStore(lambda _: None)
    alerts, letters = writer(store)
    good = FakeMsg(alert_event().model_dump_json().encode())
    bad = FakeMsg(b'{"event": "opened"}')

    await alerts.handle([bad, good])

    assert store.applied == [alert_event()]
    assert good.log == ["ack"] and bad.log == ["ack"]
    [(body, headers)] = letters
    assert body == bad.data
    assert headers[DLQ_KIND] == "invalid_message"
    assert headers[DLQ_CONSUMER] == WRITER_POSTGRES_ALERTS_DURABLE
    assert headers[DLQ_SUBJECT] == bad.subject


async def test_a_transient_error_naks_and_max_deliveries_go_to_the_dlq() -> None:
    alerts, letters = writer(FakeStore(lambda _: ConnectionResetError("reset")))
    fresh = FakeMsg(alert_event().model_dump_json().encode(), delivered=1)
    tired = FakeMsg(alert_event(alert_id="a-2").model_dump_json().encode(),
                    delivered=MAX_DELIVER)

    await alerts.handle([fresh, tired])

    assert fresh.log == ["nak"] and tired.log == ["ack"]
    assert [h[DLQ_KIND] for _, h in letters] == ["max_deliver"]


async def test_a_permanent_error_dead_letters_only_the_refused_event() -> None:
    def fail(events: list[AlertEvent]) -> Exception | None:
        refused = asyncpg.StringDataRightTruncationError("value too long")
        return refused if any(e.alert_id == "bad" for e in events) else None

    store = FakeStore(fail)
    alerts, letters = writer(store)
    msgs = [FakeMsg(alert_event(alert_id=i).model_dump_json().encode()) for i in ("a", "bad", "c")]

    await alerts.handle(msgs)

    assert [e.alert_id for e in store.applied] == ["a", "c"]
    assert [m.log for m in msgs] == [["ack"], ["ack"], ["ack"]]
    assert [(b, h[DLQ_KIND]) for b, h in letters] == [(msgs[1].data, "bad_rows")]


async def test_when_the_dead_letter_cannot_be_published_the_message_is_nakked() -> None:
    async def refuse(body: bytes, headers: dict[str, str]) -> None:
        raise TimeoutError

    alerts = AlertWriter(store=FakeStore(lambda _: None), dead_letter=refuse)  # type: ignore[arg-type]
    bad = FakeMsg(b"not json")
    await alerts.handle([bad])
    assert bad.log == ["nak"]


# -- the running writer's alerts loop ----------------------------------------------------------
async def publish_alert(js: Any, ns: Namespace, event: AlertEvent) -> None:
    await js.publish(
        ns.alert_subject(event.domain, event.severity.value, event.source_id),
        event.model_dump_json().encode(),
        stream=ns.stream(DP_EVENTS),
        headers={MSG_ID_HEADER: f"{event.alert_id}:{event.event.value}"},
    )


async def wait_for(check: Callable[[], Any], what: str, seconds: float = 20.0) -> Any:
    deadline = asyncio.get_running_loop().time() + seconds
    while True:
        result = await check()
        if result:
            return result
        if asyncio.get_running_loop().time() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        await asyncio.sleep(0.05)


async def alerts_settled(js: Any, ns: Namespace) -> bool:
    info = await js.consumer_info(ns.stream(DP_EVENTS), WRITER_POSTGRES_ALERTS_DURABLE)
    last = (await js.stream_info(ns.stream(DP_EVENTS))).state.last_seq
    return bool(info.num_pending == 0 and info.num_ack_pending == 0
                and info.delivered.stream_seq == last)


@pytest.mark.integration
async def test_the_running_writer_persists_the_alert_lifecycle_from_the_bus(
    run_writer: Any, jetstream: Any, bus_prefix: str, database_dsn: str
) -> None:
    ns = Namespace(bus_prefix)
    source = "rack.4 unit*7"  # escaped in the subject, original in the row
    opened = alert_event(alert_id="x-1", source_id=source)
    closed = closed_event(alert_id="x-1", source_id=source, count=4, emitted=5)
    async with run_writer():
        await publish_alert(jetstream, ns, opened)

        async def one_open() -> Any:
            rows = await alert_rows(database_dsn)
            return rows if rows and rows[0]["status"] == "open" else None

        [row] = await wait_for(one_open, "the opened alert row")
        assert without_bookkeeping(row) == expected_row(opened)

        await publish_alert(jetstream, ns, closed)
        await publish_alert(jetstream, ns, opened)  # a late duplicate (after the dedup window)
        await jetstream.publish(ns.alert_subject("infrastructure", "warning", "s"), b"{oops",
                                stream=ns.stream(DP_EVENTS))
        await wait_for(lambda: alerts_settled(jetstream, ns), "the alerts consumer to ack all")
        sub = await jetstream.pull_subscribe(
            ns.dlq_subject(WRITER_POSTGRES_ALERTS_DURABLE), stream=ns.stream(DP_DLQ)
        )
        [letter] = await sub.fetch(1, timeout=5)
        await sub.unsubscribe()

    [row] = await alert_rows(database_dsn)
    assert without_bookkeeping(row) == expected_row(closed)
    assert letter.data == b"{oops" and letter.headers[DLQ_KIND] == "invalid_message"
