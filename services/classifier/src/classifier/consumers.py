"""The classifier's durable consumers on ``DP_RAW``, created from their contract definitions:
``classifier-part-<p>`` (the bundles of partition p) and ``classifier-drain-<p>`` (the former
per-source subjects, drained during an upgrade)."""

from __future__ import annotations

import re
from typing import Any

from tributary_contracts import CLASSIFIER_DURABLE, Namespace, classifier_drain_consumer
from tributary_contracts.jetstream import ConsumerDef


def _is_not_found(exc: Exception) -> bool:
    return getattr(exc, "code", None) == 404 or "not found" in str(exc).lower()


async def ensure_durable(js: Any, ns: Namespace, definition: ConsumerDef, **start: Any) -> str:
    """Create the durable ``definition`` if missing (``start``: its deliver policy, e.g. a start
    sequence), check that the server kept its filter, and return its name.

    nats-server 2.9 silently ignores what it does not know: the filter of what exists is
    checked, and a durable filtering something else is an error naming it.
    """
    stream = definition.stream_name(ns)
    try:
        info = await js.consumer_info(stream, definition.durable)
    except Exception as exc:
        if not _is_not_found(exc):
            raise
        try:
            await js.add_consumer(stream, **(definition.kwargs(ns) | start))
        except Exception:  # another replica created it first: use that one
            pass
        info = await js.consumer_info(stream, definition.durable)
    expected = definition.filter_subject(ns)
    if info.config.filter_subject != expected:
        raise RuntimeError(
            f"consumer {definition.durable} on {stream} filters "
            f"{info.config.filter_subject!r}, expected {expected!r}; delete it to recreate it"
        )
    return definition.durable


_FORMER_DURABLE = re.compile(rf"^{re.escape(CLASSIFIER_DURABLE)}(?:-\d+-of-\d+)?$")
"""The durables of the classifier before partitioned subjects: ``classifier`` and
``classifier-<i>-of-<N>`` (filter ``dp.raw.>``)."""


async def former_ack_floor(js: Any, stream: str) -> int | None:
    """The lowest ack floor (stream sequence) among the former classifier durables on
    ``stream``: everything up to it was classified by the former classifier. None when there
    is no former durable."""
    floors = [
        info.ack_floor.stream_seq
        for info in await js.consumers_info(stream)
        if _FORMER_DURABLE.match(info.name or "")
    ]
    return min(floors) if floors else None


async def ensure_drain_durable(js: Any, ns: Namespace, partition: int) -> str:
    """Create partition ``partition``'s drain durable of the former per-source subjects if
    missing; its name. It starts after the former durables' lowest ack floor (what they may not
    have finished is classified again: duplicates, dropped by the stream state, the msg ids and
    the writers' key), or at the stream's start when there is no former durable."""
    definition = classifier_drain_consumer(partition)
    start: dict[str, Any] = {}
    stream = definition.stream_name(ns)
    try:
        await js.consumer_info(stream, definition.durable)
    except Exception as exc:
        if not _is_not_found(exc):
            raise
        floor = await former_ack_floor(js, stream)
        if floor is not None:
            start = {"deliver_policy": "by_start_sequence", "opt_start_seq": floor + 1}
    return await ensure_durable(js, ns, definition, **start)
