"""The opt-in raw ledger (seed 003's ``raw_record``/``ingest_error``): for the domains and sources
an operator selects (canary devices, a firmware rollout), a gateway also publishes each input
exactly as received, with the points and the errors that came of it, as a ``RawRecord`` on
``dp.ledger.<transport>``; writer-postgres stores it in ``raw_record``/``ingest_error``.

Selection (gateway setting ``RAW_LEDGER``): a comma list of ``<domain>/<source glob>`` entries,
e.g. ``machines/*`` (a whole domain) or ``machines/dev-1*,iot/0f6c1b2e-*``; empty = no ledger.
The ledger is best effort: a failed ledger publish is counted, never fails the producer's input.
"""

from __future__ import annotations

import base64
import fnmatch
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field, field_validator

from tributary_contracts import (
    MSG_ID_HEADER,
    DataPoint,
    Namespace,
    PointRef,
    RawRecord,
    RejectedEntry,
    Transport,
)
from tributary_ingest.batches import OutgoingMessage, excerpt
from tributary_ingest.points import Rejection
from tributary_runtime.publish import Outgoing, publish_one

DEFAULT_LEDGER_PAYLOAD_BYTES = 64 * 1024


class RawLedgerSettings(BaseModel):
    """The ledger settings of a gateway (env vars of the same names); mixed into its settings."""

    raw_ledger: str = Field(
        default="",
        description="Raw ledger opt-in: comma list of <domain>/<source glob> (machines/*, "
        "machines/dev-1*); each selected input is also published as a RawRecord on "
        "dp.ledger.<transport> (writer-postgres: raw_record, ingest_error). Empty: off.",
    )
    raw_ledger_payload_bytes: int = Field(
        default=DEFAULT_LEDGER_PAYLOAD_BYTES,
        ge=0,
        le=4 * 1024 * 1024,
        description="Most bytes of one input kept in its RawRecord (the rest is cut, marked).",
    )

    @field_validator("raw_ledger")
    @classmethod
    def _parses(cls, value: str) -> str:
        LedgerSelector.parse(value)
        return value

    @property
    def ledger_selector(self) -> LedgerSelector:
        return LedgerSelector.parse(self.raw_ledger)


@dataclass(frozen=True)
class LedgerSelector:
    """Which (domain, source) inputs go to the raw ledger."""

    entries: tuple[tuple[str, str], ...] = ()

    @classmethod
    def parse(cls, spec: str) -> LedgerSelector:
        """``"machines/*,iot/dev-1*"`` → selector; ``ValueError`` naming a malformed entry."""
        entries = []
        for item in (part.strip() for part in spec.split(",")):
            if not item:
                continue
            domain, slash, glob = item.partition("/")
            if not slash or not domain or not glob:
                raise ValueError(f"raw ledger entry {item!r} must be <domain>/<source glob>")
            entries.append((domain, glob))
        return cls(tuple(entries))

    def __bool__(self) -> bool:
        return bool(self.entries)

    def matches(self, domain: str | None, source_id: str | None) -> bool:
        if domain is None or source_id is None:
            return False
        return any(
            d in (domain, "*") and fnmatch.fnmatchcase(source_id, glob) for d, glob in self.entries
        )


def ledger_message(
    namespace: Namespace,
    transport: Transport,
    domain: str,
    source_id: str,
    received_at: datetime,
    payload: bytes,
    *,
    accepted: Sequence[DataPoint] = (),
    rejections: Sequence[Rejection] = (),
    status: int | None = None,
    error: str | None = None,
    content_type: str | None = None,
    max_payload_bytes: int = DEFAULT_LEDGER_PAYLOAD_BYTES,
    excerpt_bytes: int = 1024,
) -> OutgoingMessage:
    """The ``RawRecord`` of one input as a publish on ``dp.ledger.<transport>``."""
    record_id = hashlib.sha256(
        b"\x1f".join(
            (
                transport.value.encode(),
                domain.encode(),
                source_id.encode(),
                received_at.isoformat().encode(),
                payload,
            )
        )
    ).hexdigest()
    kept = payload[:max_payload_bytes]
    record = RawRecord(
        record_id=record_id,
        transport=transport,
        domain=domain,
        source_id=source_id,
        received_at=received_at,
        content_type=content_type,
        payload_b64=base64.b64encode(kept).decode(),
        payload_bytes=len(payload),
        truncated=len(kept) < len(payload),
        status=status,
        accepted=[PointRef(stream_id=p.stream_id, ts=p.ts) for p in accepted],
        rejected=[
            RejectedEntry(
                index=r.index,
                stream_id=r.stream_id,
                reason=r.reason,
                excerpt=excerpt(r.raw, excerpt_bytes),
            )
            for r in rejections
        ],
        error=error,
    )
    return OutgoingMessage(
        namespace.ledger_subject(transport.value),
        record.model_dump_json().encode(),
        {MSG_ID_HEADER: record_id},
        0,
    )


class RawLedger:
    """Publishes the ``RawRecord`` of a selected input (best effort, bounded by ``timeout``)."""

    def __init__(
        self,
        js: Any,
        namespace: Namespace,
        transport: Transport,
        selector: LedgerSelector,
        *,
        timeout: float = 5.0,
        max_payload_bytes: int = DEFAULT_LEDGER_PAYLOAD_BYTES,
        on_failure: Callable[[BaseException], None] | None = None,
    ) -> None:
        self._js = js
        self._ns = namespace
        self._transport = transport
        self.selector = selector
        self._timeout = timeout
        self._max_payload_bytes = max_payload_bytes
        self._on_failure = on_failure

    def wants(self, domain: str | None, source_id: str | None) -> bool:
        return self.selector.matches(domain, source_id)

    async def record(
        self,
        domain: str,
        source_id: str,
        received_at: datetime,
        payload: bytes,
        **outcome: Any,
    ) -> bool:
        """Publish the record when (domain, source) is selected; whether one was acked.
        ``outcome``: ``accepted``, ``rejections``, ``status``, ``error``, ``content_type``."""
        if not self.wants(domain, source_id):
            return False
        message = ledger_message(
            self._ns,
            self._transport,
            domain,
            source_id,
            received_at,
            payload,
            max_payload_bytes=self._max_payload_bytes,
            **outcome,
        )
        try:
            await publish_one(
                self._js, Outgoing(message.subject, message.payload, message.headers),
                self._timeout,
            )
        except Exception as exc:  # the ledger never fails the producer's input
            if self._on_failure is not None:
                self._on_failure(exc)
            return False
        return True
