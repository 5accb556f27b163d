"""Reading classified points off the bus: the downstream consumer's side of the contract.

A message on ``dp.classified.>`` is either a ``ClassifiedBundle`` (subjects
``dp.classified.<domain>.<cls>.part.<p>``: batches of many sources of one partition) or, from a
fleet not yet upgraded or a former message still retained, a ``ClassifiedBatch`` (subjects
``dp.classified.<domain>.<cls>.<source>``: one source). ``decode_classified`` accepts both;
``iter_readings`` flattens either into one ``ClassifiedReading`` per point, optionally keeping
only some sources (domain and class are filtered on the server by the subject, the source on the
client since a partition mixes sources); ``PointDeduplicator`` drops a point seen before by its
idempotency key ``point_key`` (a redelivery or a replay). Depends on pydantic only.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Collection, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, NamedTuple

from pydantic import Discriminator, Tag, ValidationError

from tributary_contracts.ids import point_key
from tributary_contracts.models import (
    ClassifiedBatch,
    ClassifiedBundle,
    ClassifiedPoint,
    PointClass,
    Transport,
)
from tributary_contracts.subjects import PARTITION_TOKEN, Namespace, unescape_token


def _shape(value: Any) -> str:
    # A bundle is the only classified message with "batches"; anything else is read as a batch
    # so that a malformed message gets the batch model's field-by-field error.
    if isinstance(value, dict):
        return "bundle" if "batches" in value else "batch"
    return "bundle" if isinstance(value, ClassifiedBundle) else "batch"


ClassifiedMessage = Annotated[
    Annotated[ClassifiedBundle, Tag("bundle")] | Annotated[ClassifiedBatch, Tag("batch")],
    Discriminator(_shape),
]
"""What a ``dp.classified.>`` message decodes to: a ``ClassifiedBundle`` or a ``ClassifiedBatch``
(usable as a FastStream handler annotation)."""


def decode_classified(data: bytes | str) -> ClassifiedBundle | ClassifiedBatch:
    """Decode the JSON body of a ``dp.classified.>`` message; raises pydantic's
    ``ValidationError`` (naming the field) when it is neither a bundle nor a batch.

    The shape is guessed from the bytes (a bundle has a ``"batches"`` key) so that the body is
    parsed once, in pydantic-core, at the speed of the model itself (the discriminated union
    ``ClassifiedMessage`` parses through Python objects: twice the time); a batch whose metadata
    happens to hold that word is tried as a batch after the bundle failed."""
    raw = data.encode() if isinstance(data, str) else data
    if b'"batches"' not in raw:
        return ClassifiedBatch.model_validate_json(raw)
    try:
        return ClassifiedBundle.model_validate_json(raw)
    except ValidationError as bundle_error:
        try:
            return ClassifiedBatch.model_validate_json(raw)
        except ValidationError:
            raise bundle_error from None


def classified_batches(message: ClassifiedBundle | ClassifiedBatch) -> list[ClassifiedBatch]:
    """The per-source batches of a classified message (a batch is its own only batch)."""
    return message.batches if isinstance(message, ClassifiedBundle) else [message]


class ClassifiedReading(NamedTuple):
    """One classified point with the envelope it came in: what a downstream consumer handles.
    (A named tuple: made once per point, it costs a third of a frozen dataclass.)"""

    domain: str
    source_id: str
    transport: Transport
    cls: PointClass
    received_at: datetime
    classified_at: datetime
    point: ClassifiedPoint

    @property
    def key(self) -> str:
        """The point's idempotency key (``point_key``): equal for a redelivery or a replay."""
        return point_key(self.domain, self.source_id, self.point.stream_id, self.point.ts)


def iter_readings(
    message: ClassifiedBundle | ClassifiedBatch, sources: Collection[str] | None = None
) -> Iterator[ClassifiedReading]:
    """Every point of ``message`` in order, or only those of ``sources`` (original source ids)
    when given: a partition mixes the sources that hash to it, so per-source filtering is the
    client's."""
    for batch in classified_batches(message):
        if sources is not None and batch.source_id not in sources:
            continue
        for point in batch.points:
            yield ClassifiedReading(
                batch.domain,
                batch.source_id,
                batch.transport,
                batch.cls,
                batch.received_at,
                batch.classified_at,
                point,
            )


class PointDeduplicator:
    """Remembers the idempotency keys of the last ``capacity`` points seen, in memory.

    The bus delivers at least once: a message whose ack was lost comes again, and a replay
    (``deliver_policy=by_start_time``) repeats what was already handled. Within the remembered
    window the first copy of a point wins, as the writers' unique key does in the database. A
    consumer that must be exactly-once across its own restarts keeps the key in its store
    instead (a unique index on it), since this memory starts empty.
    """

    def __init__(self, capacity: int = 100_000) -> None:
        if capacity < 1:
            raise ValueError(f"capacity must be >= 1, got {capacity}")
        self.capacity = capacity
        self._keys: OrderedDict[str, None] = OrderedDict()

    def __len__(self) -> int:
        return len(self._keys)

    def first_time(self, key: str) -> bool:
        """True the first time ``key`` is seen (and remember it), False for a repeat."""
        if key in self._keys:
            self._keys.move_to_end(key)
            return False
        self._keys[key] = None
        if len(self._keys) > self.capacity:
            self._keys.popitem(last=False)
        return True

    def __contains__(self, key: object) -> bool:
        return key in self._keys

    def fresh(self, readings: Iterable[ClassifiedReading]) -> list[ClassifiedReading]:
        """The readings not seen before, in order, each remembered at once."""
        return [r for r in readings if self.first_time(r.key)]

    def unseen(self, readings: Iterable[ClassifiedReading]) -> list[ClassifiedReading]:
        """The readings not seen before (nor earlier in ``readings``), in order, without
        remembering them: call ``remember`` once they are handled, so that a message whose
        handling failed (nacked, redelivered) is handled again rather than skipped."""
        out: list[ClassifiedReading] = []
        keys: set[str] = set()
        for reading in readings:
            key = reading.key
            if key not in self._keys and key not in keys:
                keys.add(key)
                out.append(reading)
        return out

    def remember(self, readings: Iterable[ClassifiedReading]) -> None:
        """Mark ``readings`` as handled."""
        for reading in readings:
            self.first_time(reading.key)


@dataclass(frozen=True, slots=True)
class ClassifiedSubject:
    """The tokens of a ``dp.classified.>`` subject: a bundle's carries its partition, a former
    per-source batch's its (unescaped) source id."""

    domain: str
    cls: PointClass
    partition: int | None
    source_id: str | None


def parse_classified_subject(subject: str, ns: Namespace = Namespace()) -> ClassifiedSubject:
    """Read domain, class and partition (or former source) from a classified subject of ``ns``;
    ``ValueError`` naming the subject when it is not one."""
    head = ns.all_classified()[:-1]  # "<prefix.>dp.classified."
    if not subject.startswith(head):
        raise ValueError(f"{subject!r} is not a classified subject (expected {head}…)")
    tokens = subject[len(head) :].split(".")
    try:
        if len(tokens) == 4 and tokens[2] == PARTITION_TOKEN:
            return ClassifiedSubject(tokens[0], PointClass(tokens[1]), int(tokens[3]), None)
        if len(tokens) == 3:
            return ClassifiedSubject(
                tokens[0], PointClass(tokens[1]), None, unescape_token(tokens[2])
            )
    except ValueError as exc:
        raise ValueError(f"{subject!r} is not a classified subject: {exc}") from None
    raise ValueError(
        f"{subject!r} is not a classified subject: expected {head}<domain>.<cls>.part.<n> "
        f"or {head}<domain>.<cls>.<source>"
    )
