"""The coalescer against the real local JetStream: bundles on the partitioned subjects, one
PubAck answering every submitter, the size bounds, per-source order, dedup ids, failures."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import orjson
import pytest

from tests.streams import stored_messages
from tributary_contracts import (
    DP_RAW,
    DP_REJECTED,
    MSG_ID_HEADER,
    DataPoint,
    Namespace,
    PointBundle,
    Transport,
    batch_msg_id,
    bundle_msg_id,
    partition_of,
)
from tributary_ingest.batches import PublishOutcome
from tributary_ingest.coalesce import Coalescer, settle
from tributary_ingest.points import Rejection
from tributary_runtime.publish import PublishError

pytestmark = pytest.mark.integration

RECEIVED = datetime(2026, 3, 1, tzinfo=UTC)
LONG = 60.0  # a linger no test waits for: bundles there close by size or by flush()


def point(i: int, stream: str = "temp", pad: int = 0) -> DataPoint:
    return DataPoint(
        stream_id=stream,
        value=float(i),
        ts=RECEIVED + timedelta(seconds=i),
        metadata={"pad": "x" * pad} if pad else {},
    )


def coalescer(js: Any, ns: Namespace, **overrides: Any) -> Coalescer:
    options: dict[str, Any] = {
        "transport": Transport.HTTP,
        "partitions": 4,
        "linger_seconds": 0.005,
        "timeout": 5.0,
        "max_message_bytes": 1024 * 1024,
        "excerpt_bytes": 64,
    }
    options.update(overrides)
    return Coalescer(js, ns, **options)


async def bundles(js: Any, ns: Namespace) -> list[tuple[str, dict[str, str], PointBundle]]:
    return [
        (m.subject, m.headers, PointBundle.model_validate_json(m.data))
        for m in await stored_messages(js, ns.stream(DP_RAW))
    ]


async def test_points_of_many_sources_share_one_bundle_per_partition(
    jetstream: Any, bus_prefix: str
) -> None:
    ns = Namespace(bus_prefix)
    c = coalescer(jetstream, ns)
    sources = [f"dev-{i}" for i in range(40)]
    futures = [c.submit("iot", s, RECEIVED, [point(i)]) for i, s in enumerate(sources)]

    outcomes = await asyncio.gather(*futures)
    await c.close()

    assert outcomes == [PublishOutcome(1, 0, True)] * 40
    stored = await bundles(jetstream, ns)
    partitions = {partition_of("iot", s, 4) for s in sources}
    assert sorted(b.partition for _, _, b in stored) == sorted(partitions)
    for subject, headers, bundle in stored:
        assert subject == ns.raw_partition_subject("iot", bundle.partition)
        assert bundle.domain == "iot"
        assert all(partition_of("iot", b.source_id, 4) == bundle.partition for b in bundle.batches)
        ids = [
            batch_msg_id("iot", b.source_id, [(p.stream_id, p.ts) for p in b.points])
            for b in bundle.batches
        ]
        assert headers[MSG_ID_HEADER] == bundle_msg_id(ids)
    assert sorted(b.source_id for _, _, bundle in stored for b in bundle.batches) == sorted(
        sources
    )


async def test_a_bundle_is_published_at_max_points_without_waiting_for_the_linger(
    jetstream: Any, bus_prefix: str
) -> None:
    ns = Namespace(bus_prefix)
    c = coalescer(jetstream, ns, partitions=1, linger_seconds=LONG, max_bundle_points=10)
    futures = [c.submit("iot", f"d{i}", RECEIVED, [point(i)]) for i in range(25)]

    done, pending = await asyncio.wait(futures[:20], timeout=10)
    still_open = [f.done() for f in futures[20:]]
    await c.close()

    assert (len(done), len(pending), still_open) == (20, 0, [False] * 5)
    assert [len(b.batches) for _, _, b in await bundles(jetstream, ns)] == [10, 10, 5]
    assert all(f.result() == PublishOutcome(1, 0, True) for f in futures)


async def test_bundles_stay_under_the_byte_bound(jetstream: Any, bus_prefix: str) -> None:
    ns = Namespace(bus_prefix)
    limit = 16 * 1024
    c = coalescer(jetstream, ns, partitions=1, linger_seconds=LONG, max_message_bytes=limit)
    futures = [c.submit("iot", f"d{i}", RECEIVED, [point(i, pad=1500)]) for i in range(30)]
    c.flush()

    await asyncio.gather(*futures)
    await c.close()

    stored = await stored_messages(jetstream, ns.stream(DP_RAW))
    assert len(stored) > 1
    assert all(len(m.data) <= limit - 1024 for m in stored)
    assert sum(len(PointBundle.model_validate_json(m.data).batches) for m in stored) == 30


async def test_a_request_larger_than_a_bundle_is_answered_after_all_its_bundles(
    jetstream: Any, bus_prefix: str
) -> None:
    ns = Namespace(bus_prefix)
    c = coalescer(jetstream, ns, linger_seconds=LONG, max_bundle_points=1000, flush_points=700)
    future = c.submit("iot", "big", RECEIVED, [point(i) for i in range(2600)])
    first_two_only = (await asyncio.wait([future], timeout=0.2))[0]
    c.flush()  # 1000 + 1000 closed by size; the last 600 wait for their linger (or this)

    outcome = await future
    await c.close()

    assert (first_two_only, outcome) == (set(), PublishOutcome(6, 0, True))
    stored = await bundles(jetstream, ns)
    assert [sum(len(b.points) for b in bundle.batches) for _, _, bundle in stored] == [
        1000,
        1000,
        600,
    ]


async def test_a_quiet_partition_publishes_at_once_and_a_busy_one_after_the_linger(
    jetstream: Any, bus_prefix: str
) -> None:
    """The linger spaces a partition's bundles: the first point on a quiet partition waits for
    nothing (the loop turn's other points share its bundle), the next ones for the linger after
    it, unless their bundle reaches ``flush_points``."""
    ns = Namespace(bus_prefix)
    c = coalescer(jetstream, ns, partitions=1, linger_seconds=LONG, flush_points=50)
    first = await asyncio.wait_for(
        asyncio.gather(*(c.submit("iot", s, RECEIVED, [point(1)]) for s in "ab")), 5
    )
    lingering = c.submit("iot", "c", RECEIVED, [point(2)])
    waited = (await asyncio.wait([lingering], timeout=0.2))[0]
    full = c.submit("iot", "d", RECEIVED, [point(i) for i in range(49)])
    answered = await asyncio.wait_for(asyncio.gather(lingering, full), 5)
    await c.close()

    assert first == [PublishOutcome(1, 0, True)] * 2
    assert (waited, answered) == (set(), [PublishOutcome(1, 0, True)] * 2)
    stored = await bundles(jetstream, ns)
    assert [[b.source_id for b in bundle.batches] for _, _, bundle in stored] == [
        ["a", "b"],
        ["c", "d"],
    ]


async def test_one_source_keeps_its_order_across_many_bundles(
    jetstream: Any, bus_prefix: str
) -> None:
    ns = Namespace(bus_prefix)
    c = coalescer(jetstream, ns, linger_seconds=0.001, max_bundle_points=7)
    futures = []
    for i in range(60):
        futures.append(c.submit("iot", "dev-a", RECEIVED, [point(i)]))
        futures.append(c.submit("iot", f"other-{i}", RECEIVED, [point(i)]))
        if i % 9 == 0:
            await asyncio.sleep(0.002)

    await asyncio.gather(*futures)
    await c.close()

    values = [
        p.value
        for _, _, bundle in await bundles(jetstream, ns)
        for b in bundle.batches
        if b.source_id == "dev-a"
        for p in b.points
    ]
    assert values == [float(i) for i in range(60)]


async def test_the_same_bundle_again_is_a_duplicate(jetstream: Any, bus_prefix: str) -> None:
    ns = Namespace(bus_prefix)
    c = coalescer(jetstream, ns, linger_seconds=0)

    first = await asyncio.gather(*(c.submit("iot", s, RECEIVED, [point(1)]) for s in "abc"))
    again = await asyncio.gather(*(c.submit("iot", s, RECEIVED, [point(1)]) for s in "abc"))
    await c.close()

    assert [o.duplicates for o in first] == [0, 0, 0]
    assert [o.duplicates for o in again] == [1, 1, 1]
    assert len(await stored_messages(jetstream, ns.stream(DP_RAW))) == len(
        {partition_of("iot", s, 4) for s in "abc"}
    )


async def test_every_submitter_of_a_failed_bundle_gets_the_error(
    nats_client: Any, bus_prefix: str
) -> None:
    ns = Namespace(bus_prefix)  # no streams created: nothing answers the partition subject
    c = coalescer(nats_client.jetstream(), ns, partitions=1)
    futures = [c.submit("iot", f"d{i}", RECEIVED, [point(i)]) for i in range(5)]

    results = await asyncio.gather(*futures, return_exceptions=True)
    await c.close()

    assert [type(r) for r in results] == [PublishError] * 5
    assert {r.error_type for r in results if isinstance(r, PublishError)} == {"no_stream"}


async def test_rejections_go_to_dp_rejected_and_are_reported(
    jetstream: Any, bus_prefix: str
) -> None:
    ns = Namespace(bus_prefix)
    c = coalescer(jetstream, ns)
    bad = [Rejection(1, "temp", "value must be a number, got a string", "value", {"v": "x"})]

    outcome = await c.submit("iot", "dev-1", RECEIVED, [point(0)], bad)
    only_rejected = await c.submit("iot", "dev-2", RECEIVED, [], bad)
    await c.close()

    assert (outcome, only_rejected) == (PublishOutcome(1, 0, True), PublishOutcome(0, 0, True))
    stored = await stored_messages(jetstream, ns.stream(DP_REJECTED))
    assert [m.subject for m in stored] == [ns.rejected_subject("http")] * 2
    assert [orjson.loads(m.data)["source_id"] for m in stored] == ["dev-1", "dev-2"]


async def test_submissions_after_close_fail_and_settle_times_out(
    jetstream: Any, bus_prefix: str
) -> None:
    ns = Namespace(bus_prefix)
    c = coalescer(jetstream, ns, linger_seconds=LONG)
    waiting = c.submit("iot", "d", RECEIVED, [point(0)])
    with pytest.raises(PublishError) as timed_out:
        await settle(waiting, asyncio.get_running_loop().time())
    await c.close()

    with pytest.raises(PublishError) as closed:
        await c.submit("iot", "d", RECEIVED, [point(1)])
    assert (timed_out.value.error_type, closed.value.error_type) == ("timeout", "closed")


async def test_publish_fails_at_its_bundle_deadline_and_the_bundle_is_still_published(
    jetstream: Any, bus_prefix: str
) -> None:
    """``publish`` has no timer of its own: the bundle's deadline (``timeout`` after it opened)
    fails its waiting submitters, while plain ``submit``s of the same bundle and the bundle
    itself carry on (published, acknowledged, stored)."""
    ns = Namespace(bus_prefix)
    c = coalescer(jetstream, ns, linger_seconds=LONG, timeout=0.05, partitions=1)
    await c.submit("iot", "d-0", RECEIVED, [point(0)])  # the partition is busy from now on
    waiting = c.submit("iot", "d-1", RECEIVED, [point(0)])
    with pytest.raises(PublishError) as timed_out:
        await c.publish("iot", "d-2", RECEIVED, [point(1)])  # the linger outlasts its deadline
    c.flush()
    outcome = await waiting
    await c.close()

    assert timed_out.value.error_type == "timeout"
    assert outcome == PublishOutcome(1, 0, True)
    stored = await bundles(jetstream, ns)
    assert [[b.source_id for b in bundle.batches] for _, _, bundle in stored] == [
        ["d-0"],
        ["d-1", "d-2"],
    ]
