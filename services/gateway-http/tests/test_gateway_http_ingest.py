"""POST /ingest/data against the real local NATS: replies, and the messages really on the bus."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import nats
import orjson
import pytest

from gateway_http.app import create_app
from gateway_http.settings import GatewayHttpSettings
from tributary_access.apikeys import ApiKeyStore, Role
from tributary_contracts import (
    API_KEYS_BUCKET,
    DEFAULT_PARTITIONS,
    DP_RAW,
    DP_REJECTED,
    Namespace,
    batch_msg_id,
    bundle_msg_id,
    ensure_jetstream,
    partition_of,
)

pytestmark = pytest.mark.integration

TS = "2026-02-25T21:00:00Z"


def body(points: list[dict[str, Any]], **overrides: Any) -> dict[str, Any]:
    envelope: dict[str, Any] = {"source_id": "server-01", "domain": "infrastructure"}
    envelope["data_points"] = points
    envelope.update(overrides)
    return envelope


def series(n: int, start: datetime = datetime(2026, 2, 25, tzinfo=UTC)) -> list[dict[str, Any]]:
    return [
        {
            "stream_id": "cpu_usage",
            "value": float(i),
            "timestamp": (start + timedelta(seconds=i)).isoformat(),
        }
        for i in range(n)
    ]


async def test_post_data_publishes_one_point_batch_in_a_bundle_of_its_partition(
    gateway: Any, read_batches: Any
) -> None:
    before = datetime.now(UTC)
    points = [
        {
            "stream_id": "cpu_usage",
            "value": 45.2,
            "timestamp": TS,
            "metadata": {"core": 0},
            "sequence": 1,
            "stream_type": "cpu_usage",
        },
        {"stream_id": "mem_used", "value": 7, "timestamp": 1772053200.25},
        {"stream_id": "load_1m", "value": 0.5},
    ]

    reply = await gateway.post(body(points))

    assert reply.status_code == 202, reply.text
    assert reply.json() == {"accepted": 3, "rejected": []}
    [raw] = await read_batches()
    partition = partition_of("infrastructure", "server-01", DEFAULT_PARTITIONS)
    assert (raw.subject, raw.partition) == (
        gateway.ns.raw_partition_subject("infrastructure", partition),
        partition,
    )
    batch = raw.batch
    assert (batch.domain, batch.source_id, batch.transport) == (
        "infrastructure",
        "server-01",
        "http",
    )
    assert before <= batch.received_at <= datetime.now(UTC)
    assert [p.model_dump(exclude={"ts"}) for p in batch.points] == [
        {
            "stream_id": "cpu_usage",
            "value": 45.2,
            "stream_type": "cpu_usage",
            "sequence": 1,
            "metadata": {"core": 0},
            "legacy": None,
        },
        {
            "stream_id": "mem_used",
            "value": 7.0,
            "stream_type": None,
            "sequence": None,
            "metadata": {},
            "legacy": None,
        },
        {
            "stream_id": "load_1m",
            "value": 0.5,
            "stream_type": None,
            "sequence": None,
            "metadata": {},
            "legacy": None,
        },
    ]
    assert [p.ts for p in batch.points] == [
        datetime(2026, 2, 25, 21, 0, tzinfo=UTC),
        datetime(2026, 2, 25, 21, 0, 0, 250000, tzinfo=UTC),
        batch.received_at,  # no timestamp: the receive time
    ]
    assert raw.bundle_msg_id == bundle_msg_id(
        [batch_msg_id("infrastructure", "server-01", [(p.stream_id, p.ts) for p in batch.points])]
    )


async def test_post_data_keeps_any_source_id_in_the_payload_and_partitions_it(
    gateway: Any, read_batches: Any
) -> None:
    source = "rack.4 unit*7/ü"

    reply = await gateway.post(body(series(1), source_id=source, domain="finance"))

    assert reply.status_code == 202, reply.text
    [raw] = await read_batches()
    partition = partition_of("finance", source, DEFAULT_PARTITIONS)
    assert raw.subject.endswith(f".dp.raw.finance.part.{partition}")
    assert raw.batch.source_id == source


async def test_post_data_cuts_1200_points_into_three_batches_in_order(
    gateway: Any, read_batches: Any
) -> None:
    reply = await gateway.post(body(series(1200)))

    assert reply.status_code == 202, reply.text
    assert reply.json() == {"accepted": 1200, "rejected": []}
    batches = [r.batch for r in await read_batches()]
    assert [len(b.points) for b in batches] == [500, 500, 200]
    assert [p.value for b in batches for p in b.points] == [float(i) for i in range(1200)]


async def test_post_data_twice_is_deduplicated_on_the_stream(
    gateway: Any, read_stream: Any
) -> None:
    first = await gateway.post(body(series(700)))
    second = await gateway.post(body(series(700)))

    assert (first.status_code, second.status_code) == (202, 202)
    assert second.json() == {"accepted": 700, "rejected": []}
    assert len(await read_stream(DP_RAW)) == 1  # the retry's bundle was dropped


async def test_post_data_splits_batches_that_exceed_the_server_payload_limit(
    gateway: Any, read_stream: Any, read_batches: Any, nats_client: Any
) -> None:
    # 400 points × ~7 KiB of metadata ≈ 2.8 MB: more than NATS' max_payload (1 MiB default).
    points = [{**p, "metadata": {"blob": "x" * 7000}} for p in series(400)]

    reply = await gateway.post(body(points))

    assert reply.status_code == 202, reply.text
    messages = await read_stream(DP_RAW)
    assert len(messages) > 1
    assert all(len(m.data) <= nats_client.max_payload for m in messages)
    values = [p.value for r in await read_batches() for p in r.batch.points]
    assert values == [float(i) for i in range(400)]


async def test_post_data_accepts_good_points_and_reports_bad_ones(
    gateway: Any, read_stream: Any, read_batches: Any
) -> None:
    points = [
        {"stream_id": "ok", "value": 1.0, "timestamp": TS},
        {"stream_id": "flag", "value": True, "timestamp": TS},
        {"stream_id": "late", "value": 2.0, "timestamp": "next tuesday"},
        {"stream_id": "ok2", "value": 3.0, "timestamp": TS, "colour": "red"},
    ]

    reply = await gateway.post(body(points))

    assert reply.status_code == 202, reply.text
    assert reply.json() == {
        "accepted": 1,
        "rejected": [
            {"index": 1, "stream_id": "flag", "reason": "value must be a number, got a boolean"},
            {
                "index": 2,
                "stream_id": "late",
                "reason": "timestamp 'next tuesday' is not ISO 8601 "
                "(e.g. 2026-02-25T21:00:00Z) or epoch seconds",
            },
            {
                "index": 3,
                "stream_id": "ok2",
                "reason": "unknown field(s) colour; expected "
                "stream_id, value, timestamp, metadata, sequence, stream_type",
            },
        ],
    }
    [raw] = await read_batches()
    assert [p.stream_id for p in raw.batch.points] == ["ok"]
    [rejected] = await read_stream(DP_REJECTED)
    assert rejected.subject == gateway.ns.rejected_subject("http")
    payload = orjson.loads(rejected.data)
    assert (payload["transport"], payload["domain"], payload["source_id"]) == (
        "http",
        "infrastructure",
        "server-01",
    )
    assert [(r["index"], r["stream_id"]) for r in payload["rejected"]] == [
        (1, "flag"),
        (2, "late"),
        (3, "ok2"),
    ]
    assert payload["rejected"][0]["reason"] == "value must be a number, got a boolean"
    assert orjson.loads(payload["rejected"][0]["excerpt"]) == points[1]


async def test_post_data_with_every_point_rejected_replies_422_with_the_list(
    gateway: Any, read_stream: Any
) -> None:
    reply = await gateway.post(body([{"stream_id": "a", "value": "high"}, {"value": 1}]))

    assert reply.status_code == 422
    assert reply.json() == {
        "error": "no data point was accepted",
        "accepted": 0,
        "rejected": [
            {"index": 0, "stream_id": "a", "reason": "value must be a number, got the text 'high'"},
            {"index": 1, "stream_id": None, "reason": "stream_id is required"},
        ],
    }
    assert await read_stream(DP_RAW) == []
    [rejected] = await read_stream(DP_REJECTED)
    assert len(orjson.loads(rejected.data)["rejected"]) == 2


async def test_post_data_rejects_nan_sent_by_python_json_per_point(
    gateway: Any, read_stream: Any
) -> None:
    raw = (
        b'{"source_id": "s", "domain": "health", "data_points": ['
        b'{"stream_id": "hr", "value": NaN}, {"stream_id": "hr2", "value": 61}]}'
    )

    reply = await gateway.client.post(
        "/ingest/data", content=raw, headers={"X-API-Key": gateway.key}
    )

    assert reply.status_code == 202, reply.text
    assert reply.json() == {
        "accepted": 1,
        "rejected": [
            {"index": 0, "stream_id": "hr", "reason": "value must be a finite number, got NaN"}
        ],
    }
    assert len(await read_stream(DP_RAW)) == 1


# --- auth ---------------------------------------------------------------------------------


async def test_post_data_without_api_key_is_401_naming_the_header(gateway: Any) -> None:
    reply = await gateway.post(body(series(1)), key=None)

    assert reply.status_code == 401
    assert reply.json() == {"error": "missing X-API-Key header"}


async def test_post_data_with_unknown_api_key_is_401(gateway: Any, read_stream: Any) -> None:
    reply = await gateway.post(body(series(1)), key="trb_0123456789ab_" + "x" * 43)

    assert reply.status_code == 401
    assert reply.json() == {"error": "unknown API key"}
    assert await read_stream(DP_RAW) == []


async def test_post_data_with_admin_key_is_accepted(gateway: Any) -> None:
    admin = await gateway.keys.create(Role.ADMIN, "ops")

    reply = await gateway.post(body(series(1)), key=admin)

    assert reply.status_code == 202


async def test_post_data_with_a_role_that_may_not_ingest_is_403(
    gateway: Any, read_stream: Any
) -> None:
    key = await gateway.keys.create(Role.READ_ONLY, "dashboards")

    reply = await gateway.post(body(series(1)), key=key)

    assert reply.status_code == 403
    assert reply.json() == {
        "error": "API key role 'read_only' may not write points (read-only keys never write)"
    }
    assert await read_stream(DP_RAW) == []


# --- malformed requests -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (b'{"source_id": "s",', "body is not valid JSON: "),
        (b"", "request body is empty; expected a JSON object"),
    ],
)
async def test_post_data_with_malformed_json_is_400(
    gateway: Any, content: bytes, error: str
) -> None:
    reply = await gateway.client.post(
        "/ingest/data", content=content, headers={"X-API-Key": gateway.key}
    )

    assert reply.status_code == 400
    assert reply.json()["error"].startswith(error)


@pytest.mark.parametrize(
    ("envelope", "field", "error"),
    [
        (
            body(series(1), domain="iot"),
            "domain",
            "domain 'iot' is not accepted on /ingest/data: "
            "use the IoT endpoints (/ingest/packets, /ingest/readings, /ingest/readings/bulk)",
        ),
        ({"domain": "x", "data_points": series(1)}, "source_id", "source_id is required"),
        (
            body(series(1), domain="Bad Domain"),
            "domain",
            "domain must match ^[a-z][a-z0-9_-]{0,31}$ (lower case, e.g. infrastructure), "
            "got 'Bad Domain'",
        ),
        (body([]), "data_points", "data_points must contain at least one point"),
        (body("many"), "data_points", "data_points must be an array, got a string"),
        ([1, 2], "body", "body must be a JSON object, got an array"),
    ],
)
async def test_post_data_with_bad_envelope_is_422_naming_the_field(
    gateway: Any, read_stream: Any, envelope: Any, field: str, error: str
) -> None:
    reply = await gateway.post(envelope)

    assert reply.status_code == 422
    assert reply.json() == {"error": error, "field": field}
    assert await read_stream(DP_RAW) == []


async def test_post_data_with_too_many_points_is_413(start_gateway: Any) -> None:
    async with start_gateway(max_points_per_request=100) as gateway:
        reply = await gateway.post(body(series(101)))

    assert reply.status_code == 413
    assert reply.json() == {
        "error": "data_points has 101 points; at most 100 per request (split the request)",
        "field": "data_points",
    }


async def test_post_data_larger_than_max_body_is_413_by_content_length(
    start_gateway: Any,
) -> None:
    async with start_gateway(max_body_bytes=2048) as gateway:
        reply = await gateway.post(body(series(100)))

    assert reply.status_code == 413
    assert reply.json() == {"error": "request body is larger than 2048 bytes"}


async def test_post_data_larger_than_max_body_is_413_while_streaming(
    start_gateway: Any, read_stream: Any
) -> None:
    chunk = orjson.dumps(body(series(20)))

    async def chunked() -> Any:  # no Content-Length: the limit is enforced while reading
        for _ in range(4):
            yield chunk

    async with start_gateway(max_body_bytes=len(chunk) * 2) as gateway:
        reply = await gateway.client.post(
            "/ingest/data", content=chunked(), headers={"X-API-Key": gateway.key}
        )

    assert reply.status_code == 413
    assert reply.json() == {"error": f"request body is larger than {len(chunk) * 2} bytes"}
    assert await read_stream(DP_RAW) == []


async def test_post_data_whose_body_stalls_is_408_and_publishes_nothing(
    start_gateway: Any, read_stream: Any
) -> None:
    chunk = orjson.dumps(body(series(20)))

    async def stalling() -> Any:  # half the body, then nothing
        yield chunk[: len(chunk) // 2]
        await asyncio.sleep(30)
        yield chunk[len(chunk) // 2 :]

    async with start_gateway(body_idle_timeout_seconds=0.2) as gateway:
        started = asyncio.get_running_loop().time()
        reply = await gateway.client.post(
            "/ingest/data", content=stalling(), headers={"X-API-Key": gateway.key}
        )
        waited = asyncio.get_running_loop().time() - started
        after = await gateway.post(body(series(1)))  # the gateway goes on serving

    assert reply.status_code == 408
    assert reply.json() == {"error": "the request body sent nothing for 0.2 s; abandoned"}
    assert 0.2 <= waited < 2
    assert after.status_code == 202
    assert len(await read_stream(DP_RAW)) == 1


# --- the bus is not there -----------------------------------------------------------------


async def test_post_data_when_raw_stream_is_gone_is_503_with_retry_after(
    start_gateway: Any, jetstream: Any, bus_prefix: str
) -> None:
    ns = Namespace(bus_prefix)
    async with start_gateway(retry_after_seconds=7, publish_timeout_seconds=2) as gateway:
        await jetstream.delete_stream(ns.stream(DP_RAW))
        try:
            reply = await gateway.post(body(series(3)))
            ready = await gateway.client.get("/ready")
        finally:
            await ensure_jetstream(jetstream, ns)  # the fixture's teardown deletes it

    assert reply.status_code == 503
    assert reply.headers["Retry-After"] == "7"
    assert reply.json() == {
        "error": "the message bus did not acknowledge the data; nothing was accepted, retry later",
        "retry_after": 7,
    }
    assert ready.status_code == 503
    assert ready.json() == {"ready": False, "checks": {"nats": True, "stream": False}}


async def test_post_data_when_nats_connection_is_closed_is_503(
    start_gateway: Any, servers: Any
) -> None:
    own = await nats.connect(servers.nats_url)
    async with start_gateway(nc=own) as gateway:
        await own.close()
        reply = await gateway.post(body(series(3)))
        ready = await gateway.client.get("/ready")

    assert reply.status_code == 503
    assert reply.headers["Retry-After"] == "2"
    assert ready.json() == {"ready": False, "checks": {"nats": False, "stream": False}}


# --- ops and lifespan ---------------------------------------------------------------------


async def test_health_ready_and_metrics(gateway: Any) -> None:
    await gateway.post(body([*series(5), {"stream_id": "x", "value": "bad"}]))

    health = await gateway.client.get("/health")
    ready = await gateway.client.get("/ready")
    metrics = await gateway.client.get("/metrics")

    assert (health.status_code, health.json()) == (200, {"status": "ok"})
    assert (ready.status_code, ready.json()) == (
        200,
        {"ready": True, "checks": {"nats": True, "stream": True}},
    )
    text = metrics.text
    for name in (
        "gateway_http_points_received_total",
        "gateway_http_points_published_total",
        'gateway_http_points_rejected_total{reason="value"}',
        'gateway_http_requests_total{status="202"}',
        "gateway_http_publish_ack_seconds_bucket",
    ):
        assert name in text


async def test_app_connects_itself_and_closes_its_own_connection_on_shutdown(
    servers: Any, bus_prefix: str, jetstream: Any, read_stream: Any, run_lifespan: Any
) -> None:
    settings = GatewayHttpSettings(nats_url=servers.nats_url, bus_prefix=bus_prefix)
    clients: list[Any] = []

    async def connect() -> Any:
        clients.append(await nats.connect(settings.nats_url))
        return clients[-1]

    app = create_app(settings, connect=connect)
    keys = ApiKeyStore(await jetstream.key_value(settings.namespace.bucket(API_KEYS_BUCKET)))
    key = await keys.create(Role.SOURCE_WRITER)

    async with run_lifespan(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway"
        ) as client:
            reply = await client.post(
                "/ingest/data", json=body(series(2)), headers={"X-API-Key": key}
            )
        assert clients[0].is_connected

    assert reply.status_code == 202
    assert len(await read_stream(DP_RAW)) == 1
    assert clients[0].is_closed


async def test_app_with_default_connection_serves_from_settings(
    servers: Any, bus_prefix: str, jetstream: Any, read_stream: Any, run_lifespan: Any
) -> None:
    settings = GatewayHttpSettings(nats_url=servers.nats_url, bus_prefix=bus_prefix)
    app = create_app(settings)
    keys = ApiKeyStore(await jetstream.key_value(settings.namespace.bucket(API_KEYS_BUCKET)))
    key = await keys.create(Role.ADMIN)

    async with run_lifespan(app):
        async with httpx.AsyncClient(
            transport=httpx.ASGITransport(app=app), base_url="http://gateway"
        ) as client:
            reply = await client.post(
                "/ingest/data", json=body(series(2)), headers={"X-API-Key": key}
            )

    assert reply.status_code == 202
    assert len(await read_stream(DP_RAW)) == 1


async def test_post_data_before_startup_is_503(servers: Any, bus_prefix: str) -> None:
    app = create_app(GatewayHttpSettings(nats_url=servers.nats_url, bus_prefix=bus_prefix))

    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app), base_url="http://gateway"
    ) as client:
        reply = await client.post("/ingest/data", json=body(series(1)), headers={"X-API-Key": "k"})

    assert reply.status_code == 503
    assert reply.headers["Retry-After"] == "2"


async def test_startup_fails_within_the_timeout_when_nats_is_unreachable(
    bus_prefix: str, run_lifespan: Any
) -> None:
    settings = GatewayHttpSettings(
        nats_url="nats://127.0.0.1:1", bus_prefix=bus_prefix, startup_timeout_seconds=0.5
    )
    app = create_app(settings)

    began = asyncio.get_running_loop().time()
    with pytest.raises(RuntimeError, match="startup failed"):
        async with run_lifespan(app):
            pass

    assert asyncio.get_running_loop().time() - began < 5


async def test_concurrent_requests_of_many_sources_share_bundles_and_each_gets_202(
    start_gateway: Any, read_stream: Any, read_batches: Any
) -> None:
    sources = [f"dev-{i}" for i in range(40)]
    async with start_gateway(bundle_linger_ms=200, bus_partitions=2) as gw:
        replies = await asyncio.gather(*(gw.post(body(series(1), source_id=s)) for s in sources))

    assert [r.status_code for r in replies] == [202] * 40
    bundles = await read_stream(DP_RAW)
    # per partition: the first request's bundle goes at once (the partition was quiet), the
    # others share the next one, a linger later
    assert len(bundles) <= 4
    assert sorted(r.batch.source_id for r in await read_batches()) == sorted(sources)
    assert {r.subject for r in await read_batches()} == {
        gw.ns.raw_partition_subject("infrastructure", partition_of("infrastructure", s, 2))
        for s in sources
    }
