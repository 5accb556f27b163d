"""tributary_runtime.publish against the real local NATS (own bus prefix each): the typed result
of ``publish_all``, the error labels, and ``publish_until_acked`` retrying until acked."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from tributary_contracts import DP_DLQ, MSG_ID_HEADER, Namespace, ensure_jetstream
from tributary_runtime.publish import (
    Outgoing,
    Published,
    error_type,
    publish_all,
    publish_until_acked,
)

pytestmark = pytest.mark.integration


async def test_publish_all_says_per_message_which_was_acked_and_why_one_was_not(
    bus_prefix: str, jetstream: Any
) -> None:
    ns = Namespace(bus_prefix)
    dlq = ns.stream(DP_DLQ)
    good = Outgoing(ns.dlq_subject("t"), b"1", {MSG_ID_HEADER: "m1"}, dlq)
    again = Outgoing(ns.dlq_subject("t"), b"1", {MSG_ID_HEADER: "m1"}, dlq)
    nowhere = Outgoing(f"{bus_prefix}.no.stream.here", b"2", {})
    published = await publish_all(jetstream, [good, nowhere, again], timeout=2.0)
    assert not published.ok
    assert published.failed([good, nowhere, again]) == [nowhere]
    first, missing, duplicate = published.acks
    assert missing is None and first is not None and duplicate is not None
    assert (first.stream, first.duplicate, duplicate.duplicate) == (dlq, None, True)
    assert error_type(published.errors[1]) == "no_stream"  # type: ignore[arg-type]


async def test_publish_until_acked_retries_the_failed_ones_until_the_stream_is_back(
    bus_prefix: str, jetstream: Any
) -> None:
    ns = Namespace(bus_prefix)
    dlq = ns.stream(DP_DLQ)
    await jetstream.delete_stream(dlq)  # the next hop is down
    messages = [Outgoing(ns.dlq_subject("t"), f"{i}".encode(), {MSG_ID_HEADER: f"m{i}"}, dlq)
                for i in range(3)]
    errors: list[str] = []
    attempts: list[int] = []

    async def send(batch: Any) -> Published:
        attempts.append(len(batch))
        if len(attempts) == 2:
            await ensure_jetstream(jetstream, ns)  # back before the second attempt
        return await publish_all(jetstream, batch, timeout=2.0)

    done = await asyncio.wait_for(
        publish_until_acked(send, messages, retry_delay=0.05, max_delay=0.1,
                            on_error=lambda exc: errors.append(error_type(exc))),
        timeout=20,
    )
    assert done and attempts == [3, 3]
    assert set(errors) <= {"no_stream", "api_error"} and len(errors) == 3
    info = await jetstream.stream_info(dlq)
    assert info.state.messages == 3
