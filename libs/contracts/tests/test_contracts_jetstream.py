from __future__ import annotations

import pytest

from tests.streams import drop_namespace
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
        await drop_namespace(js, ns, missing_ok=False)


@pytest.mark.integration
async def test_ensure_jetstream_keeps_an_operator_size_cap_and_refuses_when_full(
    nats_client: object, bus_prefix: str
) -> None:
    """DP_RAW discards new: once an operator's max_bytes is reached a publish is refused (the
    gateway answers 503) rather than an older, acknowledged batch being dropped; and a service
    start (ensure_jetstream) does not lift the cap again."""
    import nats.js.errors

    js = nats_client.jetstream()  # type: ignore[attr-defined]
    ns = Namespace(bus_prefix)
    name = ns.stream("DP_RAW")
    try:
        await ensure_jetstream(js, ns)
        info = await js.stream_info(name)
        assert info.config.discard == "new"
        await js.update_stream(
            config=info.config.__class__.from_response({**info.config.as_dict(), "max_bytes": 4096})
        )
        await ensure_jetstream(js, ns)
        assert (await js.stream_info(name)).config.max_bytes == 4096

        subject = f"{bus_prefix}.dp.raw.infrastructure.s"
        with pytest.raises(nats.js.errors.APIError):
            for i in range(20):
                await js.publish(subject, b"x" * 1000, headers={"Nats-Msg-Id": str(i)})
        first = await js.get_msg(name, 1)
        assert first.data == b"x" * 1000  # the oldest message is still there
    finally:
        await drop_namespace(js, ns, missing_ok=False)
