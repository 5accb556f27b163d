"""Request JSON → accepted ``DataPoint``s + per-point rejections (no HTTP, no NATS here).

Envelope problems (body not an object, bad ``source_id``/``domain``, ``data_points`` not a
non-empty list, too many points) fail the whole request with ``EnvelopeError``. Point problems
reject only that point, by the rules every gateway shares (``tributary_ingest.points``: every
problem of the point is named in its ``reason``, and ``code`` is a bounded label for metrics).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from tributary_contracts import DataPoint
from tributary_ingest.points import (
    IOT_DOMAIN,
    Rejection,
    check_domain,
    check_identifier,
    duplicate_problem,
    id_text,
    json_type,
    missing,
    normalize_point,
    safe_text,
)

ENVELOPE_FIELDS = frozenset({"source_id", "domain", "data_points"})


class EnvelopeError(ValueError):
    """The request as a whole is unacceptable (→ 422, or 413 when ``too_large``)."""

    def __init__(self, field: str, message: str, *, too_large: bool = False) -> None:
        super().__init__(message)
        self.field = field
        self.message = message
        self.too_large = too_large


@dataclass
class NormalizedRequest:
    """What one ingest request becomes."""

    source_id: str
    domain: str
    accepted: list[DataPoint] = field(default_factory=list)
    rejected: list[Rejection] = field(default_factory=list)


def parse_envelope(body: Any, max_points: int) -> tuple[str, str, list[Any]]:
    """``(source_id, domain, raw points)`` of a parsed body, or ``EnvelopeError``."""
    if not isinstance(body, dict):
        raise EnvelopeError("body", f"body must be a JSON object, got {json_type(body)}")
    if problem := duplicate_problem(body, "the body"):
        raise EnvelopeError("body", problem)
    unknown = sorted(safe_text(str(k))[:64] for k in body if k not in ENVELOPE_FIELDS)
    if unknown:
        raise EnvelopeError(
            unknown[0],
            f"unknown field(s) {', '.join(unknown)}; expected source_id, domain, data_points",
        )
    for name in ("source_id", "domain", "data_points"):
        if name not in body:
            raise EnvelopeError(name, missing(name))
    source_id = id_text(body["source_id"])
    problem = check_identifier(source_id, "source_id")
    if problem:
        raise EnvelopeError("source_id", problem)
    domain = body["domain"]
    if problem := check_domain(domain):
        raise EnvelopeError("domain", problem)
    if domain == IOT_DOMAIN:
        raise EnvelopeError(
            "domain",
            "domain 'iot' is not accepted on /ingest/data: use the IoT endpoints "
            "(/ingest/packets, /ingest/readings, /ingest/readings/bulk)",
        )
    points = body["data_points"]
    if not isinstance(points, list):
        raise EnvelopeError("data_points", f"data_points must be an array, got {json_type(points)}")
    if not points:
        raise EnvelopeError("data_points", "data_points must contain at least one point")
    if len(points) > max_points:
        raise EnvelopeError(
            "data_points",
            f"data_points has {len(points)} points; at most {max_points} per request "
            "(split the request)",
            too_large=True,
        )
    return source_id, domain, points


def normalize_request(body: Any, received_at: datetime, max_points: int) -> NormalizedRequest:
    """A parsed request body → accepted points and rejections (``EnvelopeError`` if hopeless)."""
    source_id, domain, raw_points = parse_envelope(body, max_points)
    result = NormalizedRequest(source_id, domain)
    accepted, rejected = result.accepted, result.rejected
    for index, raw in enumerate(raw_points):
        point = normalize_point(raw, index, received_at)
        if isinstance(point, Rejection):
            rejected.append(point)
        else:
            accepted.append(point)
    return result
