"""The writer started inline (create_app + lifespan) against the real NATS and PostgreSQL."""

from __future__ import annotations

import json
from collections.abc import Callable
from contextlib import AbstractAsyncContextManager
from datetime import timedelta
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from tests.writers import consumer_settled, dead_letters, publish, publish_bundle, wait_until
from tributary_contracts import (
    DLQ_KIND,
    DLQ_REASON,
    DLQ_SUBJECT,
    DP_CLASSIFIED,
    WRITER_POSTGRES_DURABLE,
    ClassifiedBatch,
    ClassifiedBundle,
    Namespace,
    PointClass,
)

pytestmark = pytest.mark.integration

RunWriter = Callable[..., AbstractAsyncContextManager[Starlette]]


@pytest.fixture
def ns(bus_prefix: str) -> Namespace:
    return Namespace(bus_prefix)


async def test_published_batches_are_stored_exactly_and_acked(
    run_writer: RunWriter, jetstream: Any, ns: Namespace, database_dsn: str, make_batch: Any,
    expect: Any, read_rows: Any,
) -> None:
    batches = [
        make_batch(5, source_id=f"server-{i}", cls=cls)
        for i, cls in enumerate([PointClass.NORMAL, PointClass.CRITICAL, PointClass.ANOMALY])
    ]
    async with run_writer():
        for batch in batches:
            await publish(jetstream, ns, batch)
        await wait_until(lambda: consumer_settled(jetstream, ns, WRITER_POSTGRES_DURABLE),
                         "the consumer to ack all")
    assert await read_rows(database_dsn) == expect(*batches)
    assert await dead_letters(jetstream, ns, WRITER_POSTGRES_DURABLE, 0) == []


async def test_a_row_postgres_refuses_goes_to_the_dlq_and_the_rest_is_stored(
    run_writer: RunWriter, jetstream: Any, ns: Namespace, database_dsn: str, make_batch: Any,
    expect: Any, read_rows: Any,
) -> None:
    poisoned = make_batch(3, source_id="sensor-box")
    poisoned.points[1].metadata = {"note": "a\u0000b"}  # jsonb cannot store \u0000
    clean = make_batch(4, source_id="server-ok")
    async with run_writer():
        await publish(jetstream, ns, poisoned)
        await publish(jetstream, ns, clean)
        await wait_until(lambda: consumer_settled(jetstream, ns, WRITER_POSTGRES_DURABLE),
                         "the consumer to ack all")
        letters = await dead_letters(jetstream, ns, WRITER_POSTGRES_DURABLE, 1)
    good = poisoned.model_copy(update={"points": [poisoned.points[0], poisoned.points[2]]})
    assert await read_rows(database_dsn) == expect(good, clean)
    assert len(letters) == 1
    refused = ClassifiedBatch.model_validate_json(letters[0].data)
    assert refused == poisoned.model_copy(update={"points": [poisoned.points[1]]})
    assert letters[0].headers[DLQ_KIND] == "bad_rows"
    assert letters[0].headers[DLQ_REASON].startswith("22P05: unsupported Unicode escape sequence")
    assert letters[0].headers[DLQ_SUBJECT] == ns.classified_subject(
        poisoned.domain, poisoned.cls, poisoned.source_id
    )


async def test_bundles_and_former_batches_are_stored_exactly_once(
    run_writer: RunWriter, jetstream: Any, ns: Namespace, database_dsn: str, make_batch: Any,
    expect: Any, read_rows: Any,
) -> None:
    # A fleet upgraded to partitioned subjects: former per-source ClassifiedBatch messages
    # still in the stream, then bundles of many sources, one of them repeating a batch.
    former = make_batch(3, source_id="server-old")
    a, b = make_batch(4, source_id="server-a"), make_batch(2, source_id="server-b")
    c = make_batch(1, source_id="server-c", cls=PointClass.CRITICAL)
    async with run_writer():
        await publish(jetstream, ns, former)
        await publish_bundle(jetstream, ns, [a, b], partition=1)
        await publish_bundle(jetstream, ns, [c], partition=3)
        await publish_bundle(jetstream, ns, [b, former], partition=1)  # a replay: no new rows
        await wait_until(lambda: consumer_settled(jetstream, ns, WRITER_POSTGRES_DURABLE),
                         "the consumer to ack all")
    assert await read_rows(database_dsn) == expect(former, a, b, c)
    assert await dead_letters(jetstream, ns, WRITER_POSTGRES_DURABLE, 0) == []


async def test_a_refused_row_of_a_bundle_is_dead_lettered_as_a_bundle_of_its_batch(
    run_writer: RunWriter, jetstream: Any, ns: Namespace, database_dsn: str, make_batch: Any,
    expect: Any, read_rows: Any,
) -> None:
    poisoned = make_batch(3, source_id="sensor-box")
    poisoned.points[1].metadata = {"note": "a\u0000b"}  # jsonb cannot store \u0000
    clean = make_batch(4, source_id="server-ok")
    async with run_writer():
        bundle = await publish_bundle(jetstream, ns, [clean, poisoned], partition=2)
        await wait_until(lambda: consumer_settled(jetstream, ns, WRITER_POSTGRES_DURABLE),
                         "the consumer to ack all")
        letters = await dead_letters(jetstream, ns, WRITER_POSTGRES_DURABLE, 1)
    good = poisoned.model_copy(update={"points": [poisoned.points[0], poisoned.points[2]]})
    assert await read_rows(database_dsn) == expect(clean, good)
    refused = ClassifiedBundle.model_validate_json(letters[0].data)
    assert refused == bundle.model_copy(
        update={"batches": [poisoned.model_copy(update={"points": [poisoned.points[1]]})]}
    )
    assert letters[0].headers[DLQ_KIND] == "bad_rows"
    assert letters[0].headers[DLQ_SUBJECT] == ns.classified_partition_subject(
        poisoned.domain, poisoned.cls, 2
    )


async def test_a_refused_point_classified_twice_in_two_bundles_is_dead_lettered_once(
    run_writer: RunWriter, jetstream: Any, ns: Namespace, database_dsn: str, make_batch: Any,
    expect: Any, read_rows: Any,
) -> None:
    # A producer's retry went out in another bundle (a gateway bundles what arrives): the
    # classifier classified the points twice, in bundles of different make-up.
    poisoned = make_batch(2, source_id="sensor-box")
    poisoned.points[0].metadata = {"note": "a\u0000b"}
    other = make_batch(1, source_id="server-x")
    again = poisoned.model_copy(update={"classified_at": poisoned.classified_at + timedelta(1)})
    async with run_writer():
        await publish_bundle(jetstream, ns, [poisoned], partition=1)
        await publish_bundle(jetstream, ns, [other, again], partition=1)
        await wait_until(lambda: consumer_settled(jetstream, ns, WRITER_POSTGRES_DURABLE),
                         "the consumer to ack all")
        letters = await dead_letters(jetstream, ns, WRITER_POSTGRES_DURABLE, 1)
    good = poisoned.model_copy(update={"points": [poisoned.points[1]]})
    assert await read_rows(database_dsn) == expect(good, other)
    assert len(letters) == 1


async def test_a_domain_routed_to_sqlserver_is_not_written(
    run_writer: RunWriter, jetstream: Any, ns: Namespace, database_dsn: str, make_batch: Any,
    expect: Any, read_rows: Any,
) -> None:
    iot = make_batch(3, domain="iot", source_id="device-1")
    infra = make_batch(2, domain="infrastructure")
    async with run_writer(sink_routes="iot=sqlserver,*=postgres"):
        await publish(jetstream, ns, iot)
        await publish(jetstream, ns, infra)
        await wait_until(lambda: consumer_settled(jetstream, ns, WRITER_POSTGRES_DURABLE),
                         "the consumer to ack all")
    assert await read_rows(database_dsn) == expect(infra)
    assert await dead_letters(jetstream, ns, WRITER_POSTGRES_DURABLE, 0) == []


async def test_a_message_that_is_not_json_lands_on_the_dlq(
    run_writer: RunWriter, jetstream: Any, ns: Namespace, database_dsn: str, make_batch: Any,
    expect: Any, read_rows: Any,
) -> None:
    subject = ns.classified_subject("infrastructure", "normal", "server-01")
    valid = make_batch(2)
    async with run_writer():
        await jetstream.publish(subject, b"not json {", stream=ns.stream(DP_CLASSIFIED))
        await jetstream.publish(
            subject, json.dumps({"domain": "infrastructure"}).encode(),
            stream=ns.stream(DP_CLASSIFIED),
        )
        await publish(jetstream, ns, valid)
        await wait_until(lambda: consumer_settled(jetstream, ns, WRITER_POSTGRES_DURABLE),
                         "the consumer to ack all")
        letters = await dead_letters(jetstream, ns, WRITER_POSTGRES_DURABLE, 2)
    assert [m.data for m in letters] == [b"not json {", b'{"domain": "infrastructure"}']
    assert [m.headers[DLQ_KIND] for m in letters] == ["invalid_message"] * 2
    assert "Invalid JSON" in letters[0].headers[DLQ_REASON]
    assert "source_id" in letters[1].headers[DLQ_REASON]  # names the missing field
    assert await read_rows(database_dsn) == expect(valid)


async def test_writer_recovers_when_postgres_drops_its_connections(
    run_writer: RunWriter, jetstream: Any, ns: Namespace, database_dsn: str, make_batch: Any,
    expect: Any, read_rows: Any, servers: Any,
) -> None:
    before = make_batch(2, source_id="before")
    after = make_batch(3, source_id="after")
    async with run_writer():
        await publish(jetstream, ns, before)
        await wait_until(lambda: consumer_settled(jetstream, ns, WRITER_POSTGRES_DURABLE),
                         "the first batch")
        admin = await asyncpg.connect(servers.postgres_dsn)
        try:  # what a PostgreSQL restart does to the pool's connections
            killed = await admin.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity"
                " WHERE datname = $1 AND pid <> pg_backend_pid()",
                database_dsn.rsplit("/", 1)[1],
            )
        finally:
            await admin.close()
        assert killed >= 1
        await publish(jetstream, ns, after)
        await wait_until(lambda: consumer_settled(jetstream, ns, WRITER_POSTGRES_DURABLE),
                         "the second batch")
    assert await read_rows(database_dsn) == expect(before, after)


async def test_ops_endpoints_report_readiness_and_metrics(
    run_writer: RunWriter, jetstream: Any, ns: Namespace, make_batch: Any
) -> None:
    async with run_writer() as app:
        await publish(jetstream, ns, make_batch(2))
        await wait_until(lambda: consumer_settled(jetstream, ns, WRITER_POSTGRES_DURABLE),
                         "the consumer to ack all")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://writer") as client:
            health = await client.get("/health")
            ready = await client.get("/ready")
            metrics = await client.get("/metrics")
    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (
        200, {"ready": True, "checks": {"nats": True, "postgres": True}}
    )
    for name in ("writer_postgres_points_written_total", "writer_postgres_commit_seconds_bucket",
                 "writer_postgres_rows_per_commit_bucket", "writer_postgres_messages_acked_total"):
        assert name in metrics.text
