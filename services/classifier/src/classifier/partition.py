"""Partitions: several classifier processes, each owning the sources that hash to its index.

A stream's state (latest point, run, alert) must be advanced by one process, in order. With
``CLASSIFIER_PARTITIONS`` = N > 1, partition i (``CLASSIFIER_PARTITION``) runs its own durable
consumer ``classifier-<i>-of-<N>`` on ``DP_RAW`` (filter ``dp.raw.>``): every partition is
delivered every message, classifies those whose ``(domain, source)`` hashes to i and acks the
others at once without output. So no message is classified by two partitions (each has one
owner) and none is skipped (the owner's own durable delivers every message to it), whatever
the timing of the other partitions. The other partitions' messages cost a fetch and an ack
each (cheap next to classifying 100 points), and the subjects are unchanged.

Why not server-side subject mapping: nats-server 2.9 has a ``partition()`` transform only in
account mappings of the server config (not something a service can set up, and it would change
the stored subject, which is part of the contract); stream subject transforms need ≥ 2.10.

The hash is FNV-1a (32 bit) of the domain token and the escaped source token of the subject
(``dp.raw.<domain>.<source>``) concatenated, modulo N: computed from the subject alone, so a
message is assigned without parsing it, and the same for every partition.

N = 1 (the default) is the former behaviour exactly: durable ``classifier``, every message
classified.
"""

from __future__ import annotations

import re
from typing import Any

from tributary_contracts import (
    CLASSIFIER_DURABLE,
    CONSUMERS,
    Namespace,
    ensure_consumer,
    escape_token,
)

_FNV_OFFSET = 0x811C9DC5
_FNV_PRIME = 0x01000193
_PARTITION_DURABLE = re.compile(rf"^{re.escape(CLASSIFIER_DURABLE)}(?:-\d+-of-(\d+))?$")


def fnv1a_32(data: bytes) -> int:
    """FNV-1a, 32 bit."""
    h = _FNV_OFFSET
    for byte in data:
        h = ((h ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return h


def token_partition(domain_token: str, source_token: str, partitions: int) -> int:
    """Partition of the subject tokens ``<domain>``, ``<escaped source>``."""
    if partitions == 1:
        return 0
    return fnv1a_32((domain_token + source_token).encode()) % partitions


def source_partition(domain: str, source_id: str, partitions: int) -> int:
    """Partition of ``(domain, source_id)`` (the source id as in the payload)."""
    return token_partition(domain, escape_token(source_id), partitions)


def partition_durable(index: int, partitions: int) -> str:
    """Durable consumer of partition ``index`` of ``partitions``."""
    if partitions == 1:
        return CLASSIFIER_DURABLE
    return f"{CLASSIFIER_DURABLE}-{index}-of-{partitions}"


class PartitionFilter:
    """Which raw messages and checkpointed sources belong to one partition."""

    def __init__(self, ns: Namespace, index: int, partitions: int) -> None:
        self.index = index
        self.partitions = partitions
        self._raw_prefix = ns.all_raw()[:-1]  # "<prefix.>dp.raw."
        self._cache: dict[str, bool] = {}

    def owns_subject(self, subject: str) -> bool:
        """True when the raw message on ``subject`` is this partition's to classify."""
        owned = self._cache.get(subject)
        if owned is None:
            rest = subject[len(self._raw_prefix) :] if subject.startswith(self._raw_prefix) else ""
            domain, _, source = rest.partition(".")
            owned = token_partition(domain, source, self.partitions) == self.index
            if len(self._cache) >= 100_000:
                self._cache.clear()
            self._cache[subject] = owned
        return owned

    def owns_source(self, domain: str, source_id: str) -> bool:
        """True when ``(domain, source_id)``'s streams are this partition's."""
        return source_partition(domain, source_id, self.partitions) == self.index


async def ensure_partition_consumer(js: Any, ns: Namespace, index: int, partitions: int) -> str:
    """Create the durable of partition ``index`` if missing; its name.

    N = 1: the contract's ``classifier`` durable (``ensure_consumer``). N > 1: a new durable
    starts after the lowest ack floor of the classifier durables of *other* layouts on
    ``DP_RAW`` (``classifier``, ``classifier-*-of-M`` with M ≠ N: every source had its owner
    among them, so everything up to that floor was classified); what they may not have finished
    is classified again (duplicates: the state, the msg ids and the writers' key drop them),
    nothing is skipped. The durables of this layout's other partitions do not count: they ack
    the messages of this partition's sources without classifying them. Without any other
    layout, it starts at the beginning of the stream.
    """
    if partitions == 1:
        await ensure_consumer(js, ns, CLASSIFIER_DURABLE)
        return CLASSIFIER_DURABLE
    durable = partition_durable(index, partitions)
    definition = CONSUMERS[CLASSIFIER_DURABLE]
    stream = definition.stream_name(ns)
    try:
        await js.consumer_info(stream, durable)
        return durable
    except Exception as exc:
        if getattr(exc, "code", None) != 404 and "not found" not in str(exc).lower():
            raise
    floors = []
    for info in await js.consumers_info(stream):
        match = _PARTITION_DURABLE.match(info.name or "")
        if match is not None and match.group(1) != str(partitions):
            floors.append(info.ack_floor.stream_seq)
    params = definition.kwargs(ns) | {"durable_name": durable}
    if floors:
        params |= {"deliver_policy": "by_start_sequence", "opt_start_seq": min(floors) + 1}
    try:
        await js.add_consumer(stream, **params)
    except Exception:  # another process of this partition created it first: use that one
        await js.consumer_info(stream, durable)
    return durable
