"""The gateway base's context (``gateway``) against the real local JetStream: access refusals,
publish after the PubAck, the 503."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from nats.aio.client import Client
from prometheus_client import CollectorRegistry, Counter
from pydantic import Field

from tests.streams import stored_messages
from tributary_access.apikeys import Action, Role
from tributary_access.guard import GuardSettings
from tributary_contracts import DP_RAW, DataPoint, PointBundle, Transport, ensure_jetstream
from tributary_ingest.bus import BundleLingerSettings, GatewayBusSettings
from tributary_ingest.gateway import GatewayContext, GatewayMetrics, open_gateway
from tributary_runtime.ops import Reply
from tributary_runtime.settings import ServiceSettings

pytestmark = pytest.mark.integration

RECEIVED = datetime(2026, 3, 1, tzinfo=UTC)


class Settings(GatewayBusSettings, BundleLingerSettings, GuardSettings, ServiceSettings):
    publish_timeout_seconds: float = Field(default=2.0)
    retry_after_seconds: int = Field(default=3)
    rejected_excerpt_bytes: int = Field(default=64)


def metrics() -> GatewayMetrics:
    return GatewayMetrics(
        Counter("t_errors", "errors", ["stage", "error_type"], registry=CollectorRegistry())
    )


def errors(ctx: GatewayContext[Any], stage: str, kind: str) -> float:
    return ctx.metrics.errors.labels(stage, kind)._value.get()  # type: ignore[no-any-return]


def points(n: int) -> list[DataPoint]:
    return [
        DataPoint(stream_id="temp", value=float(i), ts=RECEIVED + timedelta(seconds=i))
        for i in range(n)
    ]


@pytest.fixture
async def ctx(
    servers: Any, bus_prefix: str, nats_client: Client, jetstream: Any
) -> AsyncIterator[GatewayContext[Settings]]:
    settings = Settings(
        nats_url=servers.nats_url, bus_prefix=bus_prefix, rate_limit_source_burst=10,
        rate_limit_source_points_per_second=1,
    )
    gateway = await open_gateway(
        settings, "test-gw", Transport.HTTP, metrics(), linger_seconds=0.002,
        nats_client=nats_client,
    )
    yield gateway
    await gateway.close()


async def test_authenticate_refuses_a_missing_key_with_the_given_reason(
    ctx: GatewayContext[Settings],
) -> None:
    with pytest.raises(Reply) as refused:
        await ctx.authenticate(None, "10.0.0.1", "CONNECT x", "missing api_key field")

    assert (refused.value.status, refused.value.body) == (401, {"error": "missing api_key field"})


async def test_a_granted_key_is_checked_against_role_and_scope(
    ctx: GatewayContext[Settings],
) -> None:
    key = (await ctx.bus.keys.issue(Role.SOURCE_WRITER, source_ids=["a"], domains=["plant"])).key
    targets: list[str] = []

    def target() -> str:
        targets.append("made")
        return "POST /x"

    granted = await ctx.authenticate(key, "10.0.0.1", target)
    ctx.guard.check(granted, Action.WRITE_POINTS, "10.0.0.1", target, "plant", "a")
    assert targets == []  # nothing refused: no audit target was made
    with pytest.raises(Reply) as refused:
        ctx.guard.check(granted, Action.WRITE_POINTS, "10.0.0.1", target, "plant", "b")

    assert refused.value.status == 403
    assert "source_id 'b'" in refused.value.body["error"]
    assert targets == ["made"]


async def test_points_beyond_the_source_budget_are_429_with_retry_after(
    ctx: GatewayContext[Settings],
) -> None:
    now = datetime.now(UTC)
    ctx.guard.admit_points("plant", "a", [now] * 10, now)
    with pytest.raises(Reply) as refused:
        ctx.guard.admit_points("plant", "a", [now] * 5, now)
    with pytest.raises(Reply) as too_many:
        ctx.guard.admit_points("plant", "b", [now] * 11, now)

    assert refused.value.status == 429
    assert refused.value.headers == {"Retry-After": str(refused.value.body["retry_after"])}
    assert too_many.value.status == 413


async def test_publish_returns_after_the_pubacks_of_the_bundles_on_the_stream(
    ctx: GatewayContext[Settings], jetstream: Any, bus_prefix: str
) -> None:
    outcome = await ctx.publish("plant", "a", RECEIVED, points(3))
    count = await ctx.publish_sources("plant", {"b": points(2), "c": points(1)}, RECEIVED)

    stored = await stored_messages(jetstream, ctx.settings.namespace.stream(DP_RAW))
    bundles = [PointBundle.model_validate_json(m.data) for m in stored]
    assert outcome.batches == 1 and count == 3
    assert sorted(len(b.points) for bundle in bundles for b in bundle.batches) == [1, 2, 3]


async def test_publish_without_the_stream_is_the_contract_503_and_counted(
    ctx: GatewayContext[Settings], jetstream: Any
) -> None:
    await jetstream.delete_stream(ctx.settings.namespace.stream(DP_RAW))

    with pytest.raises(Reply) as refused:
        await ctx.publish("plant", "a", RECEIVED, points(1))

    assert refused.value.status == 503
    assert refused.value.body == {
        "error": "the message bus did not acknowledge the data; nothing was accepted, retry later",
        "retry_after": 3,
    }
    assert refused.value.headers == {"Retry-After": "3"}
    assert errors(ctx, "publish", "no_stream") + errors(ctx, "publish", "timeout") == 1
    await ensure_jetstream(jetstream, ctx.settings.namespace)  # the fixture deletes it


async def test_a_context_without_access_checks_says_so(
    servers: Any, bus_prefix: str, nats_client: Client, jetstream: Any
) -> None:
    settings = Settings(nats_url=servers.nats_url, bus_prefix=bus_prefix)
    ctx = await open_gateway(
        settings, "test-mqtt", Transport.MQTT, metrics(), linger_seconds=0, access=False,
        nats_client=nats_client,
    )
    try:
        assert ctx.access is None
        with pytest.raises(RuntimeError, match="without access checks"):
            ctx.guard.admit("10.0.0.1")
        assert await ctx.ready() == {"nats": True, "stream": True}
    finally:
        await ctx.close()
