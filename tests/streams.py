"""JetStream for tests and benches: reading back what a test's code published (direct stream
gets, in order), and deleting a scratch bus namespace afterwards."""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Any

from tributary_contracts import DP_RAW, MSG_ID_HEADER, Namespace, PointBatch, PointBundle
from tributary_contracts.jetstream import BUCKETS, STREAMS


@dataclass
class StoredMessage:
    subject: str
    headers: dict[str, str]
    data: bytes


async def stored_messages(js: Any, stream: str) -> list[StoredMessage]:
    """Every message currently in ``stream``, in order."""
    info = await js.stream_info(stream)
    if info.state.messages == 0:
        return []
    messages = []
    for seq in range(info.state.first_seq, info.state.last_seq + 1):
        msg = await js.get_msg(stream, seq)
        messages.append(StoredMessage(msg.subject or "", dict(msg.headers or {}), msg.data or b""))
    return messages


async def drop_namespace(js: Any, ns: Namespace | str, *, missing_ok: bool = True) -> None:
    """Delete every stream and KV bucket of the bus namespace ``ns`` (a prefix or a Namespace).

    ``missing_ok``: one never created (or already gone) is skipped, as a teardown wants;
    False raises instead, for a test that expects all of them to exist."""
    ns = Namespace(ns) if isinstance(ns, str) else ns
    if not ns.prefix:
        raise ValueError("refusing to drop the production namespace (no prefix)")
    ignored: tuple[type[Exception], ...] = (Exception,) if missing_ok else ()
    for stream in STREAMS:
        with contextlib.suppress(*ignored):
            await js.delete_stream(ns.stream(stream.base))
    for base, _, _ in BUCKETS:
        with contextlib.suppress(*ignored):
            await js.delete_key_value(ns.bucket(base))


async def drop_namespace_at(nats_url: str, prefix: str) -> None:
    """:func:`drop_namespace` over a connection of its own."""
    import nats

    nc = await nats.connect(nats_url)
    try:
        await drop_namespace(nc.jetstream(), prefix)
    finally:
        await nc.close()


@dataclass
class RawBatch:
    """One ``PointBatch`` as stored on ``DP_RAW``: inside the ``PointBundle`` of ``subject``."""

    subject: str
    bundle_msg_id: str
    partition: int
    batch: PointBatch


async def raw_batches(js: Any, ns: Namespace) -> list[RawBatch]:
    """Every ``PointBatch`` in the namespace's raw stream, in order, out of their bundles."""
    out = []
    for message in await stored_messages(js, ns.stream(DP_RAW)):
        bundle = PointBundle.model_validate_json(message.data)
        out.extend(
            RawBatch(message.subject, message.headers.get(MSG_ID_HEADER, ""), bundle.partition, b)
            for b in bundle.batches
        )
    return out
