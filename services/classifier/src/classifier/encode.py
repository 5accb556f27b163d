"""Raw messages parsed (``parse_raw``) and ``ClassifiedBundle`` JSON written straight from the
parsed points, without a model per point.

Building a ``ClassifiedPoint`` per point and dumping it cost about as much as classifying the
point. Here every output point is the input point's fields (``DataPoint.__dict__``, validated
when the batch was parsed) plus ``reason``, ``rule`` and ``config_version``, dumped by orjson.
Each batch of the result parses to the same ``ClassifiedBatch`` as
``classify.classified_batch(…).model_dump_json()`` (a test checks it field by field).

orjson refuses what pydantic accepts in a few corners (integers beyond 64 bits in ``sequence``,
``metadata`` or legacy ids); such a batch goes through the model instead.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import orjson
from pydantic import BaseModel

from classifier.classify import classified_batch
from classifier.verdict import Classified
from tributary_contracts import ClassifiedBundle, PointBatch, PointBundle, PointClass


def _model_fields(value: Any) -> Any:
    """orjson's fallback for what it cannot encode itself: ``legacy`` (a LegacyIds model)."""
    if isinstance(value, BaseModel):
        return value.model_dump(mode="json")
    raise TypeError(f"cannot encode {type(value).__name__} as JSON")


@dataclass(frozen=True, slots=True)
class RawInput:
    """One raw message: the batches of one domain, in order, and where they came from."""

    domain: str
    partition: int
    """The bundle's partition; for a former per-source message, -1 (its subject has none)."""
    batches: list[PointBatch]
    former: bool
    """A ``PointBatch`` on a former per-source subject (drained during an upgrade)."""


def parse_raw(data: bytes, *, former: bool) -> RawInput:
    """A raw message as validated batches: a ``PointBundle``, or with ``former`` a single
    ``PointBatch`` (a former per-source subject). Raises ``ValidationError``."""
    if former:
        batch = parse_batch(data)
        return RawInput(batch.domain, -1, [batch], True)
    bundle = PointBundle.model_validate_json(data)
    for batch in bundle.batches:
        _shared_utc(batch)
    return RawInput(bundle.domain, bundle.partition, bundle.batches, False)


def _shared_utc(batch: PointBatch) -> None:
    for point in batch.points:
        fields = point.__dict__  # as validated: no second validation through __setattr__
        fields["ts"] = fields["ts"].astimezone(UTC)


def parse_batch(data: bytes) -> PointBatch:
    """A raw message as a validated ``PointBatch`` whose point times share one tzinfo (UTC).

    pydantic-core gives every parsed datetime its own ``TzInfo`` object, and two datetimes
    with different tzinfo objects compare, subtract and convert through ``utcoffset()`` calls:
    ~10× slower than with a shared one. Each point's ``ts`` is converted once here
    (``astimezone(UTC)``: the same instant; the contract's times are UTC anyway), so the
    comparisons with the stream's state, the msg ids and the JSON of outputs and checkpoints
    take the fast paths. Raises ``ValidationError`` like ``model_validate_json``.
    """
    batch = PointBatch.model_validate_json(data)
    _shared_utc(batch)
    return batch


def _batch_doc(
    batch: PointBatch, cls: PointClass, classified_at: datetime, points: list[Classified]
) -> dict[str, Any]:
    return {
        "domain": batch.domain,
        "source_id": batch.source_id,
        "transport": batch.transport,
        "received_at": batch.received_at,
        "cls": cls,
        "classified_at": classified_at,
        "points": [
            {
                **point.__dict__,
                "reason": verdict.reason,
                "rule": verdict.rule,
                "config_version": version,
            }
            for point, verdict, version in points
        ],
    }


def classified_bundle_json(
    domain: str,
    cls: PointClass,
    partition: int,
    classified_at: datetime,
    members: list[tuple[PointBatch, list[Classified]]],
) -> bytes:
    """The JSON of the ClassifiedBundle of ``members`` (each an input batch and its points of
    class ``cls``)."""
    document = {
        "domain": domain,
        "cls": cls,
        "partition": partition,
        "batches": [_batch_doc(b, cls, classified_at, points) for b, points in members],
    }
    try:
        # OPT_UTC_Z: "…Z" for UTC, as pydantic writes it.
        return orjson.dumps(document, default=_model_fields, option=orjson.OPT_UTC_Z)
    except orjson.JSONEncodeError:
        bundle = ClassifiedBundle.model_construct(
            domain=domain,
            partition=partition,
            batches=[classified_batch(b, cls, classified_at, points) for b, points in members],
        )
        bundle.cls = cls  # not a keyword of model_construct (its own first argument)
        return bundle.model_dump_json().encode()


def classified_batch_json(
    batch: PointBatch, cls: PointClass, classified_at: datetime, points: list[Classified]
) -> bytes:
    """The JSON of the ClassifiedBatch of ``points`` (all of class ``cls``)."""
    try:
        return orjson.dumps(
            _batch_doc(batch, cls, classified_at, points),
            default=_model_fields,
            option=orjson.OPT_UTC_Z,
        )
    except orjson.JSONEncodeError:
        return classified_batch(batch, cls, classified_at, points).model_dump_json().encode()
