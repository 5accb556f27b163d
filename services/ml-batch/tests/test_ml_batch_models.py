"""Each model on known series, the anomaly score, and threshold crossings."""

from __future__ import annotations

import numpy as np
import pytest

from ml_batch import models


def _windows(series: list[list[float]], step: float = 60.0, width: int | None = None):
    width = width or max(len(s) for s in series)
    times = [[(i - len(s) + 1) * step for i in range(len(s))] for s in series]
    return models.pad_windows(times, series, width)


def _forecast(series: list[float], model: str, horizon: int = 5, **kw: float):
    w = _windows([series])
    code = np.array([models.MODEL_CODES[model]])
    return models.forecast(w, code, horizon, **kw)  # type: ignore[arg-type]


def test_trend_forecasts_a_straight_line_exactly() -> None:
    line = [3.0 + 0.5 * i for i in range(50)]
    fc = _forecast(line, "trend", horizon=10)
    expected = [3.0 + 0.5 * i for i in range(50, 60)]
    np.testing.assert_allclose(fc.path[0], expected, rtol=0, atol=1e-9)
    assert fc.dt[0] == 60.0
    assert fc.slope_per_second[0] == pytest.approx(0.5 / 60.0)


def test_taylor_forecasts_a_parabola_exactly_and_a_line_too() -> None:
    parabola = [1.0 + 0.2 * i + 0.01 * i * i for i in range(40)]
    fc = _forecast(parabola, "taylor", horizon=5, taylor_points=12)
    expected = [1.0 + 0.2 * i + 0.01 * i * i for i in range(40, 45)]
    np.testing.assert_allclose(fc.path[0], expected, atol=1e-6)
    line = [10.0 - 2.0 * i for i in range(20)]
    np.testing.assert_allclose(
        _forecast(line, "taylor", horizon=3).path[0], [-30.0, -32.0, -34.0], atol=1e-6
    )


def test_ewma_forecast_is_flat_at_the_smoothed_level() -> None:
    fc = _forecast([10.0] * 30 + [20.0], "ewma", horizon=4, alpha=0.5)
    np.testing.assert_allclose(fc.path[0], [15.0] * 4)
    constant = _forecast([7.0] * 12, "ewma", horizon=3)
    np.testing.assert_allclose(constant.path[0], [7.0] * 3)


def test_models_handle_streams_of_different_lengths_in_one_matrix() -> None:
    short = [1.0, 2.0, 3.0, 4.0]
    long = [float(i) for i in range(30)]
    w = _windows([short, long], width=30)
    fc = models.forecast(w, np.array([1, 1]), 2)
    np.testing.assert_allclose(fc.path, [[5.0, 6.0], [30.0, 31.0]], atol=1e-9)


def test_step_change_yields_a_high_anomaly_score() -> None:
    rng = np.random.default_rng(1)
    noise = list(50.0 + rng.normal(0, 1.0, 97))
    calm = models.anomaly_scores(_windows([[*noise, 50.5, 49.2, 50.8]]), score_points=3)
    step = models.anomaly_scores(_windows([[*noise, 70.0, 70.3, 69.8]]), score_points=3)
    assert calm.score[0] < 3.5
    assert step.score[0] > 15
    assert step.observed[0] == pytest.approx(70.3)
    assert step.baseline[0] == pytest.approx(50.0, abs=0.5)
    assert step.sigma[0] == pytest.approx(1.0, abs=0.25)


def test_flat_series_scores_zero_and_any_step_scores_huge() -> None:
    s = models.anomaly_scores(_windows([[5.0] * 40, [5.0] * 39 + [5.5]]), score_points=1)
    assert s.score[0] == 0.0
    assert s.score[1] >= 1e6 - 1


def test_a_trending_series_is_not_an_anomaly_but_leaving_the_trend_is() -> None:
    rng = np.random.default_rng(2)
    ramp = [0.3 * i + rng.normal(0, 0.5) for i in range(100)]
    off = ramp[:97] + [0.3 * i + 8.0 for i in range(97, 100)]
    s = models.anomaly_scores(_windows([ramp, off]), score_points=3)
    assert s.score[0] < 4
    assert s.score[1] > 10


def test_earlier_outliers_do_not_mask_a_new_one() -> None:
    rng = np.random.default_rng(3)
    series = list(20.0 + rng.normal(0, 1.0, 100))
    series[10], series[40] = 80.0, -40.0  # old spikes in the baseline
    series[-1] = 30.0
    assert models.anomaly_scores(_windows([series]), score_points=1).score[0] > 7


def test_too_short_baseline_scores_zero() -> None:
    assert models.anomaly_scores(_windows([[1.0, 1.0, 9.0]]), 1).score[0] == 0.0


def test_crossing_time_is_interpolated_between_steps() -> None:
    latest = np.array([10.0, 10.0, 10.0, 35.0])
    path = np.array([[12.0, 14.0, 16.0]] * 3 + [[36.0, 37.0, 38.0]])
    dt = np.array([60.0] * 4)
    bound = np.array([13.0, 20.0, np.nan, 30.0])
    sec = models.crossing_seconds(latest, path, dt, bound, "above")
    assert sec[0] == pytest.approx(90.0)  # 12 → 14 crosses 13 halfway through step 2
    assert np.isnan(sec[1])  # never reaches 20 within the horizon
    assert np.isnan(sec[2])  # no limit configured
    assert np.isnan(sec[3])  # already beyond: not a forecast crossing
    down = models.crossing_seconds(
        np.array([5.0]), np.array([[4.0, 3.0]]), np.array([10.0]), np.array([3.5]), "below"
    )
    assert down[0] == pytest.approx(15.0)
