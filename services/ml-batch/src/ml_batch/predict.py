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
    anomaly_threshold: float = 4.0
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
    step_seconds: float
    horizon_seconds: float
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
        return self.as_of + timedelta(seconds=self.horizon_seconds)


def resolve_limits(
    configs: dict[str, StreamConfig], domain: str, source: str, stream: str, stype: str | None
) -> ValueConstraints | None:
    """Value limits of the config the classifier would apply (first key present wins)."""
    if not configs:
        return None
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

    # Plain Python values once for all rows (tolist), not numpy scalars element by element.
    horizon = (fc.dt * params.horizon_points).tolist()
    paths, lower, upper = fc.path.tolist(), fc.lower.tolist(), fc.upper.tolist()
    dts, codes, n_points = fc.dt.tolist(), model_codes.tolist(), counts.tolist()
    score_l, observed, baseline = (
        scores.score.tolist(), scores.observed.tolist(), scores.baseline.tolist()
    )
    sigma, base_slope, fc_slope = (
        scores.sigma.tolist(), scores.slope_per_second.tolist(), fc.slope_per_second.tolist()
    )
    rows_ = np.arange(s)
    worst_x = w.x[rows_, scores.worst_index].tolist()
    latest_l = latest.tolist()
    hits = np.flatnonzero(~np.all(np.isnan(np.stack(crossings)), axis=0)).tolist()
    crossing_l = [c.tolist() for c in crossings]
    bounds_l = bounds.tolist()
    events_of: dict[int, list[dict[str, Any]]] = {}
    for i in hits:
        as_of = loaded.last_times[i]
        found = []
        for j, (level, direction, _) in enumerate(models.LIMITS):
            sec = crossing_l[j][i]
            if sec != sec:  # NaN: no crossing of this limit
                continue
            found.append({
                "level": level, "limit": names[j][i], "bound": bounds_l[j][i],
                "direction": direction,
                "expected_at": (as_of + timedelta(seconds=sec)).isoformat(),
                "in_seconds": sec,
            })
        events_of[i] = sorted(found, key=lambda e: e["in_seconds"])

    threshold, explain_min = params.anomaly_threshold, params.explain_min_score
    ai = params.explainer_configured
    rows: list[PredictionRow] = []
    for i in np.flatnonzero(counts >= params.min_points).tolist():
        domain, source, stream = loaded.keys[i]
        as_of = loaded.last_times[i]
        n = n_points[i]
        score = score_l[i]
        is_anomaly = score >= threshold
        details = {
            "observed": observed[i],
            "observed_offset_seconds": worst_x[i],
            "baseline": baseline[i],
            "sigma": sigma[i],
            "anomaly_score": score,
            "threshold": threshold,
            "score_points": min(params.score_points, n),
            "baseline_points": max(n - params.score_points, 0),
            "baseline_slope_per_second": base_slope[i],
            "forecast_slope_per_second": fc_slope[i],
            "step_seconds": dts[i],
            "latest_value": latest_l[i],
        }
        explanation = None
        if is_anomaly:
            details["observed_at"] = (as_of + timedelta(seconds=worst_x[i])).isoformat()
            if not (ai and score >= explain_min):
                explanation = builtin_explanation(details)
        rows.append(
            PredictionRow(
                domain=domain, source_id=source, stream_id=stream,
                stream_type=loaded.stream_types[i], model=models.MODEL_NAMES[codes[i]],
                as_of=as_of, computed_at=computed_at, points_used=n, step_seconds=dts[i],
                horizon_seconds=horizon[i], forecast_values=paths[i],
                lower_bound=lower[i], upper_bound=upper[i],
                anomaly_score=score, is_anomaly=is_anomaly,
                threshold_events=events_of.get(i, []),
                explanation=explanation, details=details,
            )
        )
    return rows
