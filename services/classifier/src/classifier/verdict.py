"""The verdict on one point: its class, why, which rule decided (shared by rules and alerts)."""

from __future__ import annotations

from typing import NamedTuple

from tributary_contracts import DataPoint, PointClass


class Verdict(NamedTuple):
    """The class of one point, why (a sentence with the numbers), and which rule decided.

    ``side`` is +1 when the value broke an upper limit (or rose too fast), -1 for a lower one
    (or a fall), 0 for a normal point: the direction an alert's peak follows.

    A NamedTuple rather than a frozen dataclass: one is made per point, and a frozen dataclass
    costs four times as much to build (its ``__init__`` goes through ``object.__setattr__``).
    """

    cls: PointClass
    reason: str
    rule: str
    side: int = 0


Classified = tuple[DataPoint, Verdict, int | None]
"""One point, its verdict and the ``config_version`` applied (a plain tuple: one per point)."""
