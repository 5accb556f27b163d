"""The stream explorer's chart: an inline SVG drawn on the server (no JavaScript library).

Values over time, one dot per point (or, downsampled, one min–max bar and a mean dot per time
bucket) coloured by class; alert spans as translucent bands of their severity's colour from
opening to closing (or to the range's end while open); a time axis and a value axis.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from html import escape
from typing import Any

CLASS_COLOURS = {
    "normal": "#2e7d32",
    "warning": "#f9a825",
    "anomaly": "#8e24aa",
    "critical": "#c62828",
    "rejected": "#757575",
}
WIDTH, HEIGHT = 960, 320
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 16, 36


def _time(value: Any) -> datetime:
    if isinstance(value, datetime):
        return value
    return datetime.fromisoformat(str(value))


def _fmt(value: float) -> str:
    return f"{value:.4g}"


def _label(at: datetime, seconds: float) -> str:
    at = at.astimezone(UTC)
    if seconds <= 1800:
        return at.strftime("%H:%M:%S")
    if seconds <= 2 * 86400:
        return at.strftime("%H:%M")
    return at.strftime("%m-%d %H:%M")


def render_chart(
    rows: Sequence[dict[str, Any]],
    alerts: Sequence[dict[str, Any]],
    start: datetime,
    end: datetime,
    *,
    downsampled: bool,
    unit: str = "",
) -> str:
    """The SVG document (a string to embed in a page)."""
    span = max((end - start).total_seconds(), 1e-6)
    plot_w, plot_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    lows = [float(r["min"] if downsampled else r["value"]) for r in rows]
    highs = [float(r["max"] if downsampled else r["value"]) for r in rows]
    if lows:
        lo, hi = min(lows), max(highs)
    else:
        lo, hi = 0.0, 1.0
    if hi - lo < 1e-12:
        lo, hi = lo - 1, hi + 1
    pad = (hi - lo) * 0.05
    lo, hi = lo - pad, hi + pad

    def x(at: datetime) -> float:
        return LEFT + (at - start).total_seconds() / span * plot_w

    def y(value: float) -> float:
        return TOP + (hi - value) / (hi - lo) * plot_h

    out = [
        f'<svg xmlns="http://www.w3.org/2000/svg" class="chart" viewBox="0 0 {WIDTH} {HEIGHT}" '
        f'width="{WIDTH}" height="{HEIGHT}" role="img" aria-label="values over time">',
        f'<rect x="{LEFT}" y="{TOP}" width="{plot_w}" height="{plot_h}" fill="#fafafa" '
        'stroke="#ccc"/>',
    ]
    for alert in alerts:
        opened = max(_time(alert["opened_at"]), start)
        closed = min(_time(alert["closed_at"]) if alert.get("closed_at") else end, end)
        if closed < start or opened > end:
            continue
        colour = CLASS_COLOURS.get(str(alert.get("severity")), "#999")
        title = escape(
            f"{alert.get('severity')} alert {alert.get('status')}: {alert.get('reason') or ''}"
        )
        out.append(
            f'<rect class="alert-span" x="{x(opened):.1f}" y="{TOP}" '
            f'width="{max(x(closed) - x(opened), 2):.1f}" height="{plot_h}" fill="{colour}" '
            f'fill-opacity="0.15"><title>{title}</title></rect>'
        )
    for i in range(5):
        value = lo + (hi - lo) * i / 4
        out.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(value):.1f}" y2="{y(value):.1f}" '
            f'stroke="#eee"/><text x="{LEFT - 6}" y="{y(value) + 4:.1f}" text-anchor="end" '
            f'font-size="11">{escape(_fmt(value))}</text>'
        )
    for i in range(6):
        at = start + (end - start) * (i / 5)
        out.append(
            f'<text x="{x(at):.1f}" y="{HEIGHT - 12}" '
            f'text-anchor="{("start", "middle", "middle", "middle", "middle", "end")[i]}" '
            'font-size="11">'
            f"{_label(at, span)}</text>"
        )
    if unit:
        out.append(f'<text x="8" y="{TOP + 10}" font-size="11">{escape(unit)}</text>')
    line = " ".join(
        f"{x(_time(r['time'])):.1f},{y(float(r['mean' if downsampled else 'value'])):.1f}"
        for r in rows
    )
    if line:
        out.append(f'<polyline points="{line}" fill="none" stroke="#90a4ae" stroke-width="1"/>')
    for r in rows:
        at = _time(r["time"])
        colour = CLASS_COLOURS.get(str(r["cls"]), "#000")
        cx = x(at)
        if downsampled:
            out.append(
                f'<line x1="{cx:.1f}" x2="{cx:.1f}" y1="{y(float(r["min"])):.1f}" '
                f'y2="{y(float(r["max"])):.1f}" stroke="{colour}" stroke-width="2"/>'
            )
            value, tip = (
                float(r["mean"]),
                (
                    f"{r['time']}: {r['count']} points, min {_fmt(r['min'])}, "
                    f"max {_fmt(r['max'])}, worst class {r['cls']}"
                ),
            )
        else:
            value, tip = float(r["value"]), f"{r['time']}: {_fmt(r['value'])} ({r['cls']})"
        out.append(
            f'<circle class="point cls-{escape(str(r["cls"]))}" cx="{cx:.1f}" '
            f'cy="{y(value):.1f}" r="3.5" fill="{colour}"><title>{escape(tip)}</title></circle>'
        )
    out.append("</svg>")
    return "".join(out)


def legend_html() -> str:
    """The class colours, as HTML under the chart."""
    items = "".join(
        f'<span class="legend-item"><span class="swatch" style="background:{c}"></span>{cls}</span>'
        for cls, c in CLASS_COLOURS.items()
    )
    return (
        f'<div class="legend">{items}<span class="legend-item"><span class="swatch band">'
        "</span>alert span</span></div>"
    )
