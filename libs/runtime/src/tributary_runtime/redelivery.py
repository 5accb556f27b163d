"""JetStream redelivery arithmetic every consumer of the fleet shares (classifier, writers,
retries of the CSV importer): how often a message was delivered, and how long to wait next."""

from __future__ import annotations

from typing import Any


def deliveries(msg: Any) -> int:
    """How many times JetStream has delivered ``msg`` (1 for a message outside JetStream)."""
    try:
        return int(msg.metadata.num_delivered)
    except Exception:  # in-memory test brokers and core NATS messages carry no JS metadata
        return 1


def backoff_delay(delivered: int, base: float, cap: float) -> float:
    """Redelivery delay after the ``delivered``-th failed delivery: base·2^(n-1), at most cap."""
    return float(min(cap, base * 2 ** max(0, min(delivered - 1, 30))))
