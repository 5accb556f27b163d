from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from pydantic import ValidationError

from tributary_contracts import Namespace, PredictionBatch, prediction_msg_id

T0 = datetime(2026, 2, 25, 21, 0, tzinfo=UTC)


def _prediction(**overrides: object) -> dict[str, object]:
    body: dict[str, object] = {
        "stream_id": "cpu_usage",
        "model": "trend",
        "as_of": T0.isoformat(),
        "points_used": 100,
        "step_seconds": 300.0,
        "horizon_seconds": 600.0,
        "forecast": [88.5, 91.0],
        "anomaly_score": 1.2,
        "is_anomaly": False,
        "threshold_events": [
            {
                "level": "warning",
                "limit": "warning_max",
                "bound": 85.0,
                "direction": "above",
                "expected_at": (T0 + timedelta(minutes=7)).isoformat(),
                "in_seconds": 420.0,
            }
        ],
    }
    body.update(overrides)
    return body


def test_prediction_batch_round_trips_through_json() -> None:
    batch = PredictionBatch.model_validate(
        {"domain": "infrastructure", "source_id": "web.01", "computed_at": T0.isoformat(),
         "predictions": [_prediction()]}
    )
    assert PredictionBatch.model_validate_json(batch.model_dump_json()) == batch
    assert batch.predictions[0].threshold_events[0].in_seconds == 420.0


def test_prediction_refuses_an_unknown_threshold_level() -> None:
    bad = _prediction()
    bad["threshold_events"] = [{**bad["threshold_events"][0], "level": "severe"}]  # type: ignore[index]
    with pytest.raises(ValidationError, match="level"):
        PredictionBatch.model_validate(
            {"domain": "iot", "source_id": "s", "computed_at": T0.isoformat(),
             "predictions": [bad]}
        )


def test_prediction_subject_escapes_the_source_and_has_a_wildcard() -> None:
    ns = Namespace("t1")
    assert ns.prediction_subject("finance", "BTC.USD") == "t1.dp.prediction.finance.BTC%2EUSD"
    assert ns.all_predictions() == "t1.dp.prediction.>"


def test_prediction_msg_id_depends_on_every_key_field() -> None:
    base = prediction_msg_id("iot", "s", [("17", "trend", T0)])
    assert base == prediction_msg_id("iot", "s", [("17", "trend", T0)])
    assert base != prediction_msg_id("iot", "s", [("17", "ewma", T0)])
    assert base != prediction_msg_id("iot", "s", [("17", "trend", T0 + timedelta(seconds=1))])
    assert base != prediction_msg_id("iot", "s2", [("17", "trend", T0)])
