"""ClassifiedWriterBase._bisect: the rows a permanent error refused, found in order (no servers)."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import pytest
import structlog

from tests.writers import consumer_metrics
from tributary_contracts import SinkRoutes
from tributary_runtime.writer import ClassifiedWriterBase, Pending


class Refused(Exception):
    pass


@dataclass(kw_only=True)
class ListWriter(ClassifiedWriterBase[int, int]):
    """Writes ints to a list in one all-or-nothing step; refuses the ones in ``bad``."""

    SINK = "postgres"
    CONSUMER = "writer-test"
    metrics = consumer_metrics()
    log = structlog.get_logger()

    bad: set[int]
    transient_on: int | None = None
    written: list[list[int]] = field(default_factory=list)

    async def _write(self, rows: Sequence[int]) -> int:
        if self.transient_on in rows:
            raise ConnectionError("down")
        refused = [r for r in rows if r in self.bad]
        if refused:
            raise Refused(f"row {refused[0]}")
        self.written.append(list(rows))
        return len(rows)

    def _is_transient(self, exc: BaseException) -> bool:
        return not isinstance(exc, Refused)

    def _describe(self, exc: BaseException) -> str:
        return str(exc)


async def _no_dead_letters(body: bytes, headers: dict[str, str]) -> None:
    raise AssertionError("not expected")


def _pending(rows_per_message: list[list[int]]) -> list[Pending[int]]:
    return [Pending(msg=None, batch=None, delivered=1, rows=rows,  # type: ignore[arg-type]
                    indexes=list(range(len(rows)))) for rows in rows_per_message]


async def test_bisect_stores_the_writable_rows_in_order_and_marks_each_refused_one() -> None:
    writer = ListWriter(routes=SinkRoutes.parse("*=postgres"), dead_letter=_no_dead_letters,
                        bad={2, 5, 6})
    pending = _pending([[0, 1, 2], [3, 4, 5, 6, 7]])
    rows = [r for p in pending for r in p.rows]
    stored, refused = await writer._bisect(pending, rows, Refused("row 2"))
    assert refused == 3
    assert [r for part in writer.written for r in part] == [0, 1, 3, 4, 7]  # time order kept
    assert sum(stored) == 5
    assert [(i, str(e)) for i, e in pending[0].refused] == [(2, "row 2")]
    assert [(i, str(e)) for i, e in pending[1].refused] == [(2, "row 5"), (3, "row 6")]


async def test_bisect_lets_a_transient_error_through() -> None:
    writer = ListWriter(routes=SinkRoutes.parse("*=postgres"), dead_letter=_no_dead_letters,
                        bad={0}, transient_on=3)
    pending = _pending([[0, 1, 2, 3]])
    with pytest.raises(ConnectionError):
        await writer._bisect(pending, pending[0].rows, Refused("row 0"))
