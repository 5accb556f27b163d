from __future__ import annotations

import pytest

from tributary_contracts import CONSUMERS, Namespace, ensure_jetstream
from tributary_contracts.jetstream import BUCKETS, DUPLICATE_WINDOW_SECONDS, STREAMS


@pytest.mark.integration
async def test_ensure_jetstream_is_idempotent_and_creates_declared_objects(
    nats_client: object, bus_prefix: str
) -> None:
    js = nats_client.jetstream()  # type: ignore[attr-defined]
    ns = Namespace(bus_prefix)
    try:
        await ensure_jetstream(js, ns, consumers=tuple(CONSUMERS))
        await ensure_jetstream(js, ns, consumers=tuple(CONSUMERS))  # second run changes nothing
        raw = await js.stream_info(ns.stream("DP_RAW"))
        assert raw.config.subjects == [f"{bus_prefix}.dp.raw.>"]
        assert raw.config.duplicate_window == DUPLICATE_WINDOW_SECONDS
        for stream in STREAMS:
            await js.stream_info(ns.stream(stream.base))
        for base, _, _ in BUCKETS:
            await js.key_value(ns.bucket(base))
        # nats-server 2.9 ignores filter_subjects lists: check the single filter took effect.
        consumer = await js.consumer_info(ns.stream("DP_CLASSIFIED"), "writer-postgres")
        assert consumer.config.filter_subject == f"{bus_prefix}.dp.classified.>"
        assert consumer.config.ack_policy == "explicit"
    finally:
        for stream in STREAMS:
            await js.delete_stream(ns.stream(stream.base))
        for base, _, _ in BUCKETS:
            await js.delete_key_value(ns.bucket(base))
