"""Dead letters on ``dp.dlq.<consumer>``: the refused payload, whole, with why in headers.

The body is exactly what the consumer gave up on (or, for rows a database refused, a batch of
just those points), so an operator can fix the cause and republish it unchanged. Headers say who
gave up, why, on which subject and after how many deliveries. The ``Nats-Msg-Id`` is derived
from all of that, so a dead letter published twice (a retry after a lost ack) is stored once.
"""

from __future__ import annotations

import hashlib

from tributary_contracts.ids import MSG_ID_HEADER

DLQ_CONSUMER = "Tributary-Dlq-Consumer"
DLQ_KIND = "Tributary-Dlq-Kind"
DLQ_REASON = "Tributary-Dlq-Reason"
DLQ_SUBJECT = "Tributary-Dlq-Subject"
DLQ_DELIVERIES = "Tributary-Dlq-Deliveries"

MAX_REASON_CHARS = 1000


def one_line(text: str) -> str:
    """Header-safe reason: printable, single line, bounded."""
    flat = "".join(c if c.isprintable() else " " for c in text)
    return " ".join(flat.split())[:MAX_REASON_CHARS]


def dead_letter_headers(
    consumer: str, kind: str, reason: str, subject: str, deliveries: int, body: bytes
) -> dict[str, str]:
    """Headers of a dead letter. ``kind`` is a bounded label (invalid_message, max_deliver,
    bad_rows…); ``reason`` the human sentence (flattened to one line, truncated)."""
    reason = one_line(reason)
    digest = hashlib.sha256(f"{consumer}\x1f{kind}\x1f{reason}\x1f{subject}\x1f".encode() + body)
    return {
        DLQ_CONSUMER: consumer,
        DLQ_KIND: kind,
        DLQ_REASON: reason,
        DLQ_SUBJECT: subject,
        DLQ_DELIVERIES: str(deliveries),
        MSG_ID_HEADER: digest.hexdigest(),
    }
