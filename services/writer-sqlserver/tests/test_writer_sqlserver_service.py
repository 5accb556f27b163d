"""The writer started inline (create_app + lifespan) against the real NATS (namespaced per test)
and the PostgreSQL stand-in: the consume loop, SINK_ROUTES, DLQ, breaker and ops endpoints run
exactly the code SQL Server gets; only the dialect of the engine differs."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from contextlib import AbstractAsyncContextManager, asynccontextmanager
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.engine import Engine
from starlette.applications import Starlette

from tests.writers import consumer_settled, dead_letters, publish, wait_until
from tributary_contracts import (
    DLQ_CONSUMER,
    DLQ_KIND,
    DLQ_REASON,
    DP_CLASSIFIED,
    WRITER_SQLSERVER_DURABLE,
    ClassifiedBatch,
    Namespace,
    PointClass,
)
from writer_sqlserver.app import create_app
from writer_sqlserver.schema import alerts, ml_events, sensor_readings, sensor_readings_latest
from writer_sqlserver.settings import WriterSqlServerSettings

from .conftest import at, build_batch, rows

pytestmark = pytest.mark.integration

RunWriter = Callable[..., AbstractAsyncContextManager[Starlette]]


@pytest.fixture
def ns(bus_prefix: str) -> Namespace:
    return Namespace(bus_prefix)


@pytest.fixture
def run_writer(servers: Any, bus_prefix: str, standin_dsn: str, jetstream: Any) -> RunWriter:
    @asynccontextmanager
    async def run(**overrides: Any) -> AsyncIterator[Starlette]:
        settings = WriterSqlServerSettings(
            nats_url=servers.nats_url, bus_prefix=bus_prefix,
            mssql_dsn=standin_dsn,  # type: ignore[arg-type]
            sink_routes="iot=sqlserver,*=postgres", fetch_timeout_seconds=0.05,
            nak_backoff_seconds=0.1, nak_backoff_max_seconds=0.5, **overrides,
        )
        app = create_app(settings)
        async with app.router.lifespan_context(app):
            yield app

    return run


async def test_classified_iot_batches_end_as_legacy_rows_and_other_domains_are_skipped(
    run_writer: RunWriter, jetstream: Any, ns: Namespace, standin_engine: Engine
) -> None:
    batches = [
        build_batch([(17, 0, 21.5), (18, 0, 5.0)], cls=PointClass.NORMAL),
        build_batch([(17, 10, 130.0)], cls=PointClass.CRITICAL),
        build_batch([(17, 20, 140.0)], cls=PointClass.CRITICAL),
        build_batch([(18, 30, 45.0)], cls=PointClass.ANOMALY),
        build_batch([(99, 0, 1.0)], domain="infrastructure"),  # SINK_ROUTES: postgres's
    ]
    async with run_writer():
        for batch in batches:
            await publish(jetstream, ns, batch)
        await wait_until(lambda: consumer_settled(jetstream, ns, WRITER_SQLSERVER_DURABLE),
                         "the consumer to ack all")
    assert rows(standin_engine, sensor_readings, "sensor_id", "device_timestamp", "value") == [
        (17, at(0), 21.5), (17, at(10), 130.0), (17, at(20), 140.0), (18, at(0), 5.0),
    ]
    assert rows(standin_engine, sensor_readings_latest, "sensor_id", "value") == [
        (17, 21.5), (18, 5.0),
    ]
    assert rows(standin_engine, alerts, "sensor_id", "triggered_at", "status", "resolved_at") == [
        (17, at(10), "resolved", at(20)), (17, at(20), "active", None),
    ]
    assert rows(standin_engine, ml_events, "sensor_id", "event_type", "status") == [
        (18, "DELTA_SPIKE", "active"),
    ]
    assert await dead_letters(jetstream, ns, WRITER_SQLSERVER_DURABLE, 0) == []


async def test_what_the_legacy_schema_refuses_goes_to_the_dlq_with_its_reason(
    run_writer: RunWriter, jetstream: Any, ns: Namespace, standin_engine: Engine
) -> None:
    with standin_engine.begin() as conn:  # a legacy constraint the writer does not know about
        conn.execute(text("ALTER TABLE dbo.sensor_readings ADD CONSTRAINT plausible "
                          "CHECK (value < 1000)"))
    unmappable = build_batch([(17, 0, 1.0), (18, 0, 2.0)], legacy=False)
    unmappable.points[1] = unmappable.points[1].model_copy(update={"stream_id": "humidity"})
    refused_by_db = build_batch([(17, 1, 5000.0), (17, 2, 3.0), (19, 2, 4.0)])
    async with run_writer():
        await jetstream.publish(ns.classified_subject("iot", PointClass.NORMAL, "dev-0001"),
                                b"{not json", stream=ns.stream(DP_CLASSIFIED))
        await publish(jetstream, ns, unmappable)
        await publish(jetstream, ns, refused_by_db)
        await wait_until(lambda: consumer_settled(jetstream, ns, WRITER_SQLSERVER_DURABLE),
                         "the consumer to ack all")
    letters = sorted(await dead_letters(jetstream, ns, WRITER_SQLSERVER_DURABLE, 3),
                     key=lambda m: m.headers[DLQ_REASON])
    assert [(m.headers[DLQ_CONSUMER], m.headers[DLQ_KIND]) for m in letters] == [
        ("writer-sqlserver", "bad_rows"), ("writer-sqlserver", "bad_rows"),
        ("writer-sqlserver", "invalid_message"),
    ]
    assert letters[0].headers[DLQ_REASON].startswith("23514: new row for relation "
                                                     '"sensor_readings" violates check constraint')
    assert [p.value for p in ClassifiedBatch.model_validate_json(letters[0].data).points] == [
        5000.0]
    assert letters[1].headers[DLQ_REASON] == (
        "UnmappablePoint: point has no legacy.sensor_id and stream_id 'humidity' is not an "
        "integer sensor id")
    assert [p.stream_id for p in ClassifiedBatch.model_validate_json(letters[1].data).points] == [
        "humidity"]
    assert letters[2].data == b"{not json"
    assert rows(standin_engine, sensor_readings, "sensor_id", "device_timestamp", "value") == [
        (17, at(0), 1.0), (17, at(2), 3.0), (19, at(2), 4.0),
    ]


async def test_a_failing_database_opens_the_breaker_and_nothing_is_lost_after_recovery(
    run_writer: RunWriter, jetstream: Any, ns: Namespace, standin_engine: Engine
) -> None:
    batch = build_batch([(17, 0, 21.5), (17, 1, 22.0)])
    async with run_writer(breaker_failure_threshold=2, breaker_probe_max_seconds=1.0) as app:
        service = app.state.service
        with standin_engine.begin() as conn:  # the table vanishes: 42P01, not the data's fault
            conn.execute(text("ALTER TABLE dbo.sensor_readings RENAME TO sensor_readings_away"))
        await publish(jetstream, ns, batch)
        await wait_until(
            lambda: asyncio.sleep(0, service.breaker.is_open),
            "the breaker to open")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://writer") as client:
            ready = await client.get("/ready")
        assert (ready.status_code, ready.json()["checks"]["breaker_closed"]) == (503, False)
        with standin_engine.begin() as conn:
            conn.execute(text("ALTER TABLE dbo.sensor_readings_away RENAME TO sensor_readings"))
        await wait_until(lambda: consumer_settled(jetstream, ns, WRITER_SQLSERVER_DURABLE),
                         "the batch after recovery")
        assert not service.breaker.is_open
    assert rows(standin_engine, sensor_readings, "sensor_id", "device_timestamp") == [
        (17, at(0)), (17, at(1)),
    ]
    assert await dead_letters(jetstream, ns, WRITER_SQLSERVER_DURABLE, 0) == []


async def test_ops_endpoints_report_readiness_and_metrics(
    run_writer: RunWriter, jetstream: Any, ns: Namespace
) -> None:
    async with run_writer() as app:
        await publish(jetstream, ns, build_batch([(17, 0, 1.0)]))
        await wait_until(lambda: consumer_settled(jetstream, ns, WRITER_SQLSERVER_DURABLE),
                         "the consumer to ack all")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://writer") as client:
            health = await client.get("/health")
            ready = await client.get("/ready")
            metrics = await client.get("/metrics")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (
        200, {"ready": True, "checks": {"nats": True, "database": True, "breaker_closed": True}}
    )
    for name in ('writer_sqlserver_rows_sent_total{table="sensor_readings"}',
                 "writer_sqlserver_commit_seconds_bucket", "writer_sqlserver_circuit_open",
                 "writer_sqlserver_messages_acked_total"):
        assert name in metrics.text


async def test_start_stops_with_a_clear_message_when_a_legacy_table_is_missing(
    run_writer: RunWriter, standin_engine: Engine
) -> None:
    with standin_engine.begin() as conn:
        conn.execute(text("DROP TABLE dbo.ml_events"))
    with pytest.raises(Exception, match=r"the database lacks dbo\.ml_events: apply "
                                        r"deploy/sqlserver/001_legacy_schema\.sql"):
        async with run_writer():
            pass
