"""Builders shared by the classifier tests (fixtures, since test modules import nothing local)."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from tributary_contracts import DataPoint, PointBatch, StreamConfig, ValueConstraints

T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)

MakeBatch = Callable[..., PointBatch]


@pytest.fixture
def make_batch() -> MakeBatch:
    """``make_batch([20.0, 35.0], stream_id="temp", …)``: one point per value, 1 s apart."""

    def build(
        values: list[float],
        *,
        domain: str = "iot",
        source_id: str = "dev-1",
        stream_id: str = "temp",
        stream_type: str | None = None,
        start: datetime = T0,
        **point_fields: Any,
    ) -> PointBatch:
        points = [
            DataPoint(
                stream_id=stream_id,
                value=value,
                ts=start + timedelta(seconds=i),
                stream_type=stream_type,
                **point_fields,
            )
            for i, value in enumerate(values)
        ]
        return PointBatch(
            domain=domain,
            source_id=source_id,
            transport="http",
            received_at=start + timedelta(minutes=5),
            points=points,
        )

    return build


@pytest.fixture
def temperature_config() -> StreamConfig:
    """Every zone set: physical -40..125, alert -20/60, operational 0..50, warning 5/30."""
    return StreamConfig(
        stream_type="temperature",
        unit="celsius",
        value_constraints=ValueConstraints(
            min_value=-40,
            max_value=125,
            alert_min=-20,
            alert_max=60,
            operational_min=0,
            operational_max=50,
            warning_min=5,
            warning_max=30,
        ),
        # Alert on the first violation (the seed default is 3, with a 300 s cooldown).
        consecutive_violations_required=1,
        cooldown_seconds=0,
    )
