"""From loaded windows and stream configs to prediction rows (numpy over all streams at once)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import numpy as np

from ml_batch import models
from ml_batch.explain import builtin_explanation
from ml_batch.load import StreamWindows
from tributary_contracts import StreamConfig, ValueConstraints, config_lookup_keys


@dataclass(frozen=True)
class Params:
    """What the computation depends on (a subset of the settings, so tests need no env)."""

    window_points: int = 100
    min_points: int = 8
    horizon_points: int = 10
    default_model: str = "trend"
    model_by_type: tuple[tuple[str, str], ...] = ()
    ewma_alpha: float = 0.3
    taylor_points: int = 12
    score_points: int = 3
    anomaly_threshold: float = 5.0
    explain_min_score: float = 5.0
    explainer_configured: bool = False


@dataclass
class PredictionRow:
    """One row of the ``predictions`` table."""

    domain: str
    source_id: str
    stream_id: str
    stream_type: str | None
    model: str
    as_of: datetime
    computed_at: datetime
    points_used: int
    horizon_seconds: float
    forecast_times: list[datetime]
    forecast_values: list[float]
    lower_bound: float
    upper_bound: float
    anomaly_score: float
    is_anomaly: bool
    threshold_events: list[dict[str, Any]]
    explanation: dict[str, Any] | None
    details: dict[str, Any]

    @property
    def time(self) -> datetime:
        """Instant of the last forecast value (the table's ``time``)."""
        return self.forecast_times[-1] if self.forecast_times else self.as_of


def resolve_limits(
    configs: dict[str, StreamConfig], domain: str, source: str, stream: str, stype: str | None
) -> ValueConstraints | None:
    """Value limits of the config the classifier would apply (first key present wins)."""
    for key in config_lookup_keys(domain, source, stream, stype):
        config = configs.get(key)
        if config is not None:
            return config.value_constraints
    return None


def choose_models(stream_types: list[str | None], params: Params) -> np.ndarray:
    by_type = dict(params.model_by_type)
    return np.array(
        [models.MODEL_CODES[by_type.get(t or "", params.default_model)] for t in stream_types],
        dtype=np.int64,
    )


def compute(
    loaded: StreamWindows,
    configs: dict[str, StreamConfig],
    params: Params,
    computed_at: datetime,
) -> list[PredictionRow]:
    """A prediction per stream with at least ``min_points`` points."""
    if not len(loaded):
        return []
    w = models.pad_windows(loaded.rel_times, loaded.values, params.window_points)
    counts = w.counts
    scores = models.anomaly_scores(w, params.score_points)
    model_codes = choose_models(loaded.stream_types, params)
    fc = models.forecast(
        w, model_codes, params.horizon_points, alpha=params.ewma_alpha,
        taylor_points=params.taylor_points, sigma=scores.sigma,
    )
    latest = w.y[:, -1]

    # Limits as arrays, NaN where not configured: one column per LIMITS entry.
    s = len(loaded)
    bounds = np.full((len(models.LIMITS), s), np.nan)
    names: list[list[str | None]] = [[None] * s for _ in models.LIMITS]
    for i, ((domain, source, stream), stype) in enumerate(
        zip(loaded.keys, loaded.stream_types, strict=True)
    ):
        limits = resolve_limits(configs, domain, source, stream, stype)
        if limits is None:
            continue
        for j, (_, direction, candidates) in enumerate(models.LIMITS):
            set_ = [(getattr(limits, c), c) for c in candidates if getattr(limits, c) is not None]
            if set_:
                value, name = (min if direction == "above" else max)(set_)
                bounds[j, i], names[j][i] = value, name
    crossings = [
        models.crossing_seconds(latest, fc.path, fc.dt, bounds[j], direction)
        for j, (_, direction, _) in enumerate(models.LIMITS)
    ]

    horizon = fc.dt * params.horizon_points
    rows: list[PredictionRow] = []
    for i in np.flatnonzero(counts >= params.min_points):
        domain, source, stream = loaded.keys[i]
        as_of = loaded.last_times[i]
        dt = float(fc.dt[i])
        model = models.MODEL_NAMES[int(model_codes[i])]
        events = []
        for j, (level, direction, _) in enumerate(models.LIMITS):
            sec = crossings[j][i]
            if np.isnan(sec):
                continue
            events.append({
                "level": level, "limit": names[j][i], "bound": float(bounds[j, i]),
                "direction": direction,
                "expected_at": (as_of + timedelta(seconds=float(sec))).isoformat(),
                "in_seconds": float(sec),
            })
        events.sort(key=lambda e: e["in_seconds"])
        score = float(scores.score[i])
        is_anomaly = score >= params.anomaly_threshold
        worst = int(scores.worst_index[i])
        n = int(counts[i])
        details = {
            "observed": float(scores.observed[i]),
            "observed_at": (as_of + timedelta(seconds=float(w.x[i, worst]))).isoformat(),
            "baseline": float(scores.baseline[i]),
            "sigma": float(scores.sigma[i]),
            "anomaly_score": score,
            "threshold": params.anomaly_threshold,
            "score_points": min(params.score_points, n),
            "baseline_points": max(n - params.score_points, 0),
            "baseline_slope_per_second": float(scores.slope_per_second[i]),
            "forecast_slope_per_second": float(fc.slope_per_second[i]),
            "step_seconds": dt,
            "latest_value": float(latest[i]),
        }
        explanation = None
        if is_anomaly and not (params.explainer_configured and score >= params.explain_min_score):
            explanation = builtin_explanation(details)
        rows.append(
            PredictionRow(
                domain=domain, source_id=source, stream_id=stream,
                stream_type=loaded.stream_types[i], model=model, as_of=as_of,
                computed_at=computed_at, points_used=n, horizon_seconds=float(horizon[i]),
                forecast_times=[
                    as_of + timedelta(seconds=dt * h) for h in range(1, params.horizon_points + 1)
                ],
                forecast_values=[float(v) for v in fc.path[i]],
                lower_bound=float(fc.lower[i]), upper_bound=float(fc.upper[i]),
                anomaly_score=score, is_anomaly=is_anomaly, threshold_events=events,
                explanation=explanation, details=details,
            )
        )
    return rows
