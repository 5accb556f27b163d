"""The raw ledger's selection and record encoding (tributary_ingest.ledger)."""

from __future__ import annotations

import base64
from datetime import UTC, datetime

import pytest

from tributary_contracts import MSG_ID_HEADER, DataPoint, Namespace, RawRecord, Transport
from tributary_ingest.ledger import LedgerSelector, ledger_message
from tributary_ingest.points import Rejection

T0 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("spec", "domain", "source", "selected"),
    [
        ("machines/*", "machines", "dev-1", True),
        ("machines/*", "iot", "dev-1", False),
        ("machines/dev-1*, iot/abc", "machines", "dev-10", True),
        ("machines/dev-1*, iot/abc", "machines", "dev-2", False),
        ("machines/dev-1*, iot/abc", "iot", "abc", True),
        ("*/canary-*", "finance", "canary-7", True),
        ("", "machines", "dev-1", False),
    ],
)
def test_selection_by_domain_and_source_glob(
    spec: str, domain: str, source: str, selected: bool
) -> None:
    assert LedgerSelector.parse(spec).matches(domain, source) is selected


@pytest.mark.parametrize("spec", ["machines", "/dev-1", "machines/"])
def test_a_malformed_entry_is_refused_with_its_text(spec: str) -> None:
    with pytest.raises(ValueError, match="must be <domain>/<source glob>"):
        LedgerSelector.parse(spec)


def test_the_record_holds_the_bytes_the_points_and_the_errors() -> None:
    body = b'{"data_points": [1, 2]}'
    point = DataPoint(stream_id="x", value=1.0, ts=T0)
    bad = Rejection(index=1, stream_id="y", reason="value: not a number", code="value", raw=2)
    message = ledger_message(
        Namespace("t1"),
        Transport.HTTP,
        "machines",
        "dev-1",
        T0,
        body,
        accepted=[point],
        rejections=[bad],
        status=202,
        max_payload_bytes=10,
    )
    record = RawRecord.model_validate_json(message.payload)

    assert message.subject == "t1.dp.ledger.http"
    assert message.headers == {MSG_ID_HEADER: record.record_id}
    assert base64.b64decode(record.payload_b64) == body[:10]
    assert (record.payload_bytes, record.truncated, record.status) == (len(body), True, 202)
    assert [(p.stream_id, p.ts) for p in record.accepted] == [("x", T0)]
    assert [(e.index, e.reason, e.excerpt) for e in record.rejected] == [
        (1, "value: not a number", "2")
    ]
