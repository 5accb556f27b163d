"""Pure decisions of the writer: ownership, rows, backoff, partition months, settings."""

from __future__ import annotations

import json
import subprocess
import sys
from datetime import date
from typing import Any

import pytest
from pydantic import ValidationError

from tributary_contracts import LegacyIds, SinkRoutes
from tributary_contracts.dead_letters import one_line
from tributary_runtime.delivery import backoff_delay
from writer_postgres.consume import SINK
from writer_postgres.partitions import month_start, partition_name, wanted_months
from writer_postgres.settings import WriterPostgresSettings
from writer_postgres.store import COLUMNS, batch_rows, point_row


@pytest.mark.parametrize(
    ("routes", "domain", "owned"),
    [
        ("*=postgres", "infrastructure", True),
        ("*=postgres", "iot", True),
        ("iot=sqlserver,*=postgres", "iot", False),
        ("iot=sqlserver,*=postgres", "finance", True),
        ("iot=sqlserver", "finance", False),  # no route at all: nobody writes it
        ("finance=postgres,*=sqlserver", "finance", True),
        ("finance=postgres,*=sqlserver", "health", False),
    ],
)
def test_sink_routes_decide_what_postgres_owns(routes: str, domain: str, owned: bool) -> None:
    assert SinkRoutes.parse(routes).owns(SINK, domain) is owned


def test_settings_refuse_a_bad_sink_route() -> None:
    with pytest.raises(ValidationError, match="sink must be one of"):
        WriterPostgresSettings(sink_routes="iot=oracle")


def test_bad_sink_routes_exit_with_one_line() -> None:
    env = {"SINK_ROUTES": "iot=oracle", "PATH": "/usr/bin:/bin"}
    done = subprocess.run(
        [sys.executable, "-m", "writer_postgres"], env=env, capture_output=True, text=True,
        timeout=60,
    )
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        "invalid setting SINK_ROUTES: Value error, SINK_ROUTES entry 'iot=oracle': "
        "sink must be one of postgres, sqlserver"
    ]


def test_dsn_password_is_not_shown() -> None:
    settings = WriterPostgresSettings(postgres_dsn="postgresql://u:hunter2@db:5432/x")
    assert "hunter2" not in repr(settings)
    assert settings.dsn == "postgresql://u:hunter2@db:5432/x"


def test_point_row_carries_every_field_in_column_order(make_batch: Any) -> None:
    batch = make_batch(1)
    point = batch.points[0]
    row = dict(zip(COLUMNS, point_row(batch, point), strict=True))
    assert row == {
        "time": point.ts, "domain": "infrastructure", "source_id": "server-01",
        "stream_id": "cpu_usage", "value": 40.5, "cls": "warning",
        "reason": "value 40.5 above operational_max 40", "stream_type": "cpu_usage",
        "sequence": 0, "metadata": row["metadata"], "transport": "http",
        "received_at": batch.received_at, "rule": "operational_max", "config_version": 7,
        "legacy": None,
    }
    assert json.loads(row["metadata"]) == {"core": 0, "tags": ["a", "b"]}


def test_point_row_keeps_legacy_ids_and_empty_metadata(make_batch: Any) -> None:
    batch = make_batch(1, metadata={})
    point = batch.points[0].model_copy(update={"legacy": LegacyIds(sensor_id=17)})
    row = dict(zip(COLUMNS, point_row(batch, point), strict=True))
    assert (row["metadata"], json.loads(row["legacy"])) == ("{}", {"sensor_id": 17})


def test_batch_rows_sets_aside_a_point_no_row_can_be_built_of(make_batch: Any) -> None:
    batch = make_batch(3)
    batch.points[1].metadata["bad"] = "\ud800"  # a lone surrogate: not encodable as UTF-8
    rows, row_points, unbuildable = batch_rows(batch)
    assert (len(rows), row_points, [i for i, _ in unbuildable]) == (2, [0, 2], [1])


@pytest.mark.parametrize(
    ("delivered", "expected"), [(1, 1.0), (2, 2.0), (3, 4.0), (6, 32.0), (7, 60.0), (500, 60.0)]
)
def test_nak_backoff_grows_with_deliveries_up_to_the_cap(delivered: int, expected: float) -> None:
    assert backoff_delay(delivered, base=1.0, cap=60.0) == expected


def test_dlq_reason_is_one_printable_bounded_line() -> None:
    assert one_line("bad\x00row\n  here\t!") == "bad row here !"
    assert len(one_line("x" * 5000)) == 1000


def test_months_wrap_around_years() -> None:
    assert month_start(date(2026, 11, 23), 3) == date(2027, 2, 1)
    assert month_start(date(2026, 1, 31), -2) == date(2025, 11, 1)
    assert [partition_name(m) for m in wanted_months(date(2026, 12, 5), 1, 2)] == [
        "data_points_p202611", "data_points_p202612", "data_points_p202701",
        "data_points_p202702",
    ]
