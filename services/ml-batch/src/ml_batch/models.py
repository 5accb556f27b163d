"""Forecasts, anomaly scores and threshold crossings for many streams at once (numpy).

Every function takes a window matrix: one row per stream, one column per point, right-aligned
(the last column is every stream's latest point) and NaN-padded on the left for streams with
fewer points. Times are seconds relative to the stream's latest point (≤ 0). Nothing here knows
of databases or buses; this is where the unit tests live.

Models, all evaluated in steps of the stream's median sampling interval ``dt``:

- ``ewma``: exponentially weighted moving average level, forecast flat.
- ``trend``: least-squares line over the window, extrapolated.
- ``taylor``: the seed's Taylor extrapolation, second order: value, first and second derivative
  at the latest point, estimated by a least-squares quadratic over the latest
  ``taylor_points`` points (a Savitzky-Golay style estimate, so noise is not differentiated
  raw); ``f(t+h) ≈ f + f'·h + f''·h²/2``.

Anomaly score: the window minus the latest ``score_points`` points is the baseline; a line is
fitted to it (refitted once without points beyond 3 robust sigmas), its residuals give a median
and a MAD, and the score is the largest robust z-score ``|r - median| / (1.4826·MAD)`` of the
latest points' residuals against that line's extrapolation. Independent of the forecast model,
so all streams are judged alike.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

Array = npt.NDArray[np.float64]

MODEL_CODES = {"ewma": 0, "trend": 1, "taylor": 2}
MODEL_NAMES = {code: name for name, code in MODEL_CODES.items()}
MAD_SCALE = 1.4826
MAX_SCORE = 1e6
Z_BAND = 1.96


@dataclass
class Windows:
    """The windows of S streams: ``x`` relative times (s), ``y`` values, both (S, N)."""

    x: Array
    y: Array

    @property
    def valid(self) -> npt.NDArray[np.bool_]:
        return ~np.isnan(self.y)

    @property
    def counts(self) -> npt.NDArray[np.int64]:
        return np.asarray(self.valid.sum(axis=1), dtype=np.int64)


def pad_windows(rel_times: Sequence[Any], values: Sequence[Any], width: int) -> Windows:
    """Right-aligned, NaN-padded matrices from per-stream lists (oldest first)."""
    s = len(values)
    if s and all(len(v) == width for v in values):  # the common case: every window is full
        return Windows(np.array(rel_times, dtype=np.float64), np.array(values, dtype=np.float64))
    x = np.full((s, width), np.nan)
    y = np.full((s, width), np.nan)
    for i, (t, v) in enumerate(zip(rel_times, values, strict=True)):
        n = min(len(v), width)
        if n:
            x[i, width - n :] = t[-n:]
            y[i, width - n :] = v[-n:]
    return Windows(x, y)


def step_seconds(w: Windows) -> Array:
    """Median sampling interval per stream (1 s when undefined)."""
    with np.errstate(all="ignore"):
        diffs = np.diff(w.x, axis=1)
        diffs[diffs <= 0] = np.nan
    if diffs.shape[1] == 0:
        return np.ones(w.x.shape[0])
    dt = nanmedian_rows(diffs)
    return np.where(np.isfinite(dt) & (dt > 0), dt, 1.0)


def _line(u: Array, y: Array, mask: npt.NDArray[np.bool_]) -> tuple[Array, Array]:
    """Least-squares line per row over ``mask``: (value at u=0, slope per unit of u)."""
    wgt = mask.astype(np.float64)
    n = wgt.sum(axis=1)
    u0 = np.where(mask, u, 0.0)
    y0 = np.where(mask, y, 0.0)
    with np.errstate(all="ignore"):
        um = u0.sum(axis=1) / n
        ym = y0.sum(axis=1) / n
        du = np.where(mask, u - um[:, None], 0.0)
        dy = np.where(mask, y - ym[:, None], 0.0)
        sxx = (du * du).sum(axis=1)
        slope = np.where(sxx > 0, (du * dy).sum(axis=1) / sxx, 0.0)
    slope = np.nan_to_num(slope)
    level = ym - slope * um
    return level, slope


def ewma_level(y: Array, alpha: float) -> Array:
    """EWMA of each row, skipping NaN (the padding)."""
    level = np.full(y.shape[0], np.nan)
    for j in range(y.shape[1]):
        col = y[:, j]
        have = ~np.isnan(col)
        start = have & np.isnan(level)
        level = np.where(start, col, level)
        upd = have & ~start
        level = np.where(upd, alpha * col + (1 - alpha) * level, level)
    return level


def taylor_coefficients(u: Array, y: Array, points: int) -> tuple[Array, Array, Array]:
    """(f, f', f'') at u=0 from a least-squares quadratic over each row's latest ``points``
    points (derivatives per unit of u). Rows with fewer than 3 points get f'' = 0 (a line)."""
    n = y.shape[1]
    k = min(points, n)
    uu, yy = u[:, n - k :], y[:, n - k :]
    mask = ~np.isnan(yy)
    wgt = mask.astype(np.float64)
    uz = np.where(mask, uu, 0.0)
    yz = np.where(mask, yy, 0.0)
    basis = np.stack([np.ones_like(uz), uz, uz * uz / 2.0], axis=2) * wgt[:, :, None]
    gram = np.einsum("ski,skj->sij", basis, basis)
    rhs = np.einsum("ski,sk->si", basis, yz)
    # A touch of ridge keeps near-singular systems (3 points, duplicated spacing) solvable.
    gram = gram + np.eye(3)[None] * 1e-13 * (np.trace(gram, axis1=1, axis2=2)[:, None, None] + 1)
    coef = np.linalg.solve(gram, rhs[:, :, None])[:, :, 0]
    line_level, line_slope = _line(u, y, ~np.isnan(y))
    short = mask.sum(axis=1) < 3
    f0 = np.where(short, line_level, coef[:, 0])
    f1 = np.where(short, line_slope, coef[:, 1])
    f2 = np.where(short, 0.0, coef[:, 2])
    return f0, f1, f2


@dataclass
class Forecasts:
    """Forecast of each stream by its model: ``path`` (S, K) at steps 1..K of ``dt``."""

    model: npt.NDArray[np.int64]
    dt: Array
    path: Array
    lower: Array
    upper: Array
    slope_per_second: Array


def forecast(
    w: Windows,
    model: npt.NDArray[np.int64],
    horizon_points: int,
    *,
    alpha: float = 0.3,
    taylor_points: int = 12,
    sigma: Array | None = None,
) -> Forecasts:
    """Forecast every stream with the model its ``model`` code names (MODEL_CODES)."""
    dt = step_seconds(w)
    u = w.x / dt[:, None]  # time in steps, 0 at the latest point
    h = np.arange(1, horizon_points + 1, dtype=np.float64)[None, :]
    level, slope = _line(u, w.y, w.valid)
    trend = level[:, None] + slope[:, None] * h
    ewma = np.repeat(ewma_level(w.y, alpha)[:, None], horizon_points, axis=1)
    f0, f1, f2 = taylor_coefficients(u, w.y, taylor_points)
    taylor = f0[:, None] + f1[:, None] * h + f2[:, None] * h * h / 2.0
    path = np.choose(model[:, None], [ewma, trend, taylor])
    slope_per_step = np.choose(model, [np.zeros_like(slope), slope, f1])
    spread = np.zeros_like(dt) if sigma is None else np.nan_to_num(sigma)
    band = Z_BAND * spread[:, None] * np.sqrt(h)
    return Forecasts(
        model=model,
        dt=dt,
        path=path,
        lower=(path - band)[:, -1],
        upper=(path + band)[:, -1],
        slope_per_second=slope_per_step / dt,
    )


@dataclass
class Scores:
    """Anomaly score of each stream's latest points and what it was measured against."""

    score: Array
    baseline: Array  # the baseline line's value at the worst scored point
    observed: Array  # the worst scored point's value
    sigma: Array  # robust sigma of the baseline residuals (1.4826·MAD)
    slope_per_second: Array  # slope of the baseline line
    worst_index: npt.NDArray[np.int64]  # column of the worst scored point


def anomaly_scores(w: Windows, score_points: int, min_baseline: int = 5) -> Scores:
    """Robust z-score of the latest ``score_points`` points against a line fitted to the rest
    (see the module docstring). Streams with fewer than ``min_baseline`` baseline points
    score 0."""
    s, n = w.y.shape
    k = min(score_points, max(n - 1, 0))
    dt = step_seconds(w)
    u = w.x / dt[:, None]
    valid = w.valid
    base = valid.copy()
    base[:, n - k :] = False
    recent = valid.copy()
    recent[:, : n - k] = False

    level, slope = _line(u, w.y, base)
    for _ in range(2):  # fit, drop points beyond 3 robust sigmas of the baseline, refit
        resid = w.y - (level[:, None] + slope[:, None] * u)
        med, sigma = _robust(resid, base)
        keep = base & ~(np.abs(resid - med[:, None]) > 3 * sigma[:, None])
        # Never drop so much that the fit has nothing left.
        keep = np.where((keep.sum(axis=1) >= min_baseline)[:, None], keep, base)
        level, slope = _line(u, w.y, keep)
    resid = w.y - (level[:, None] + slope[:, None] * u)
    med, sigma = _robust(resid, base)
    # A perfectly flat baseline has MAD 0: any change is infinitely surprising. Floor sigma at
    # a tiny fraction of the series' magnitude so scores stay finite and float noise is 0.
    scale = np.nanmax(np.abs(np.where(base, w.y, np.nan)), axis=1, initial=0.0)
    floor = 1e-9 * (np.nan_to_num(scale) + 1.0)
    sig = np.maximum(np.nan_to_num(sigma), floor)
    with np.errstate(all="ignore"):
        z = np.abs(resid - med[:, None]) / sig[:, None]
    z = np.where(recent, z, -1.0)
    worst = np.argmax(z, axis=1)
    rows = np.arange(s)
    score = np.clip(z[rows, worst], 0.0, MAX_SCORE)
    enough = base.sum(axis=1) >= min_baseline
    score = np.where(enough & recent.any(axis=1), np.nan_to_num(score), 0.0)
    baseline = level + slope * u[rows, worst] + med
    return Scores(
        score=score,
        baseline=np.nan_to_num(baseline),
        observed=np.nan_to_num(w.y[rows, worst]),
        sigma=np.nan_to_num(sigma),
        slope_per_second=slope / dt,
        worst_index=worst,
    )


def nanmedian_rows(a: Array) -> Array:
    """Median of each row ignoring NaN (NaN for an all-NaN row). ``np.nanmedian`` goes through
    masked arrays for this shape and was the slowest step of a run (measured)."""
    ordered = np.sort(a, axis=1)  # NaN sort last
    n = (~np.isnan(a)).sum(axis=1)
    lo = np.maximum((n - 1) // 2, 0)[:, None]
    hi = np.maximum(n // 2, 0)[:, None]
    med = (np.take_along_axis(ordered, lo, 1) + np.take_along_axis(ordered, hi, 1))[:, 0] / 2
    return np.where(n > 0, med, np.nan)


def _robust(resid: Array, mask: npt.NDArray[np.bool_]) -> tuple[Array, Array]:
    """(median, 1.4826·MAD) of each row's residuals over ``mask`` (NaN where empty)."""
    r = np.where(mask, resid, np.nan)
    med = nanmedian_rows(r)
    mad = nanmedian_rows(np.abs(r - med[:, None]))
    return med, MAD_SCALE * mad


# Limits of a StreamConfig the forecast is checked against: (level, direction, candidates).
# Of the candidates that are set, the one reached first wins (min for above, max for below).
LIMITS: tuple[tuple[str, str, tuple[str, ...]], ...] = (
    ("warning", "above", ("warning_max", "operational_max")),
    ("critical", "above", ("alert_max", "max_value")),
    ("warning", "below", ("warning_min", "operational_min")),
    ("critical", "below", ("alert_min", "min_value")),
)


def crossing_seconds(
    latest: Array, path: Array, dt: Array, bound: Array, direction: str
) -> Array:
    """Seconds after the latest point at which each forecast path first reaches ``bound``
    (linear between steps), NaN when it does not within the horizon, when the bound is NaN
    (not configured) or when the latest value is already beyond it."""
    full = np.concatenate([latest[:, None], path], axis=1)
    if direction == "above":
        beyond = full >= bound[:, None]
    else:
        beyond = full <= bound[:, None]
    already = beyond[:, 0]
    ahead = beyond[:, 1:]
    hit = ahead.any(axis=1) & ~already & ~np.isnan(bound)
    first = np.argmax(ahead, axis=1) + 1  # column in ``full``
    rows = np.arange(full.shape[0])
    before, after = full[rows, first - 1], full[rows, first]
    with np.errstate(all="ignore"):
        frac = np.where(after != before, (bound - before) / (after - before), 1.0)
    frac = np.clip(np.nan_to_num(frac, nan=1.0), 0.0, 1.0)
    seconds = (first - 1 + frac) * dt
    return np.where(hit, seconds, np.nan)
