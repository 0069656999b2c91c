"""Static SVG plots rendered on the server: what a job page shows before plotly.js is ready.

plotly.js (the full 4.6 MB bundle, the only one the plotly package ships) takes 1.0-1.4 s to
compile and run in a fresh Chromium here (bench/dashboard.py), so a page that waits for it
paints its plots after a second. The page instead arrives with these SVGs drawn from the same
view and swaps them for the interactive plotly plots once plotly.js has run.

Pure Python and markupsafe, no plotting library: a scatter of a few thousand points is a few
milliseconds of string formatting.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup, escape

__all__ = ["Series", "nice_ticks", "plot_svg"]

WIDTH, HEIGHT = 600, 400
LEFT, RIGHT, TOP, BOTTOM = 64, 16, 36, 84


@dataclass(frozen=True)
class Series:
    """Points of one legend entry. ``symbol``: "circle", "circle-open", "x", "star",
    "triangle-up" or "line"."""

    name: str
    xs: Sequence[float]
    ys: Sequence[float]
    colour: str
    symbol: str = "circle"
    size_px: float = 3.5


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """Round tick values covering ``[low, high]``: steps of 1, 2 or 5 times a power of ten."""
    if not (math.isfinite(low) and math.isfinite(high)):
        return []
    if high <= low:
        return [low]
    raw = (high - low) / max(1, count)
    power = 10.0 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(low / step - 1e-9) * step
    ticks = []
    value = first
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def _label(value: float, ticks: list[float]) -> str:
    step = abs(ticks[1] - ticks[0]) if len(ticks) > 1 else abs(value) or 1.0
    decimals = max(0, -math.floor(math.log10(step))) if step > 0 else 0
    return f"{value:.{decimals}f}"


def _range(values: list[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    pad = (high - low) * 0.05 or abs(high) * 0.05 or 1.0
    return low - pad, high + pad


def _marker(symbol: str, x: float, y: float, r: float, colour: str) -> str:
    if symbol == "x":
        return (
            f'<path d="M{x - r:.1f} {y - r:.1f}L{x + r:.1f} {y + r:.1f}M{x - r:.1f} {y + r:.1f}'
            f'L{x + r:.1f} {y - r:.1f}" stroke="{colour}" stroke-width="1.5"/>'
        )
    if symbol == "star":  # five points, outer radius 2r: the reference, drawn over the rest
        corners = []
        for k in range(10):
            radius = 2 * r if k % 2 == 0 else 0.8 * r
            angle = math.pi / 5 * k - math.pi / 2
            corners.append(f"{x + radius * math.cos(angle):.1f},{y + radius * math.sin(angle):.1f}")
        return f'<polygon points="{" ".join(corners)}" fill="{colour}" stroke="#fff" stroke-width=".8"/>'
    if symbol == "triangle-up":  # a recovered plan's quality after the recovery stage
        top, base = y - 1.4 * r, y + 0.9 * r
        return (
            f'<polygon points="{x:.1f},{top:.1f} {x - 1.2 * r:.1f},{base:.1f} {x + 1.2 * r:.1f},{base:.1f}"'
            f' fill="{colour}" stroke="#000" stroke-width=".5"/>'
        )
    if symbol == "circle-open":
        return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="none" stroke="{colour}"/>'
    return f'<circle cx="{x:.1f}" cy="{y:.1f}" r="{r}" fill="{colour}" stroke="#000" stroke-width=".5"/>'


def plot_svg(
    series: Sequence[Series],
    *,
    title: str,
    x_label: str,
    y_label: str,
    x_lines: Sequence[float] = (),
    y_lines: Sequence[float] = (),
    line_colour: str,
    empty_note: str = "",
) -> Markup:
    """One plot as an inline ``<svg>``: linear axes with round ticks, a legend below, dotted
    lines in ``line_colour`` at ``x_lines``/``y_lines`` (constraints). With no points,
    ``empty_note`` is shown."""
    xs = [float(x) for s in series for x in s.xs]
    ys = [float(y) for s in series for y in s.ys]
    inner_w, inner_h = WIDTH - LEFT - RIGHT, HEIGHT - TOP - BOTTOM
    out = [
        f'<svg class="preview" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" aria-label="{escape(title)}"'
        ' xmlns="http://www.w3.org/2000/svg" font-family="system-ui, sans-serif" font-size="12">',
        f'<text x="{WIDTH / 2}" y="22" text-anchor="middle" font-size="15">{escape(title)}</text>',
        f'<text x="{LEFT + inner_w / 2}" y="{TOP + inner_h + 38}" text-anchor="middle">'
        f"{escape(x_label)}</text>",
        f'<text transform="translate(16 {TOP + inner_h / 2}) rotate(-90)" text-anchor="middle">'
        f"{escape(y_label)}</text>",
    ]
    if not xs:
        out.append(
            f'<text x="{LEFT + inner_w / 2}" y="{TOP + inner_h / 2}" text-anchor="middle" font-size="15"'
            f' fill="#555">{escape(empty_note)}</text></svg>'
        )
        return Markup("".join(out))
    x_low, x_high = _range(xs + [v for v in x_lines if min(xs) / 2 <= v <= max(xs) * 2])
    y_low, y_high = _range(ys + [v for v in y_lines if min(ys) - 1 <= v <= max(ys) + 1])

    def px(x: float) -> float:
        return LEFT + (x - x_low) / (x_high - x_low) * inner_w

    def py(y: float) -> float:
        return TOP + (y_high - y) / (y_high - y_low) * inner_h

    x_ticks, y_ticks = nice_ticks(x_low, x_high), nice_ticks(y_low, y_high)
    grid = []
    for t in x_ticks:
        grid.append(f'<line x1="{px(t):.1f}" x2="{px(t):.1f}" y1="{TOP}" y2="{TOP + inner_h}"/>')
        out.append(
            f'<text x="{px(t):.1f}" y="{TOP + inner_h + 16}" text-anchor="middle">{_label(t, x_ticks)}</text>'
        )
    for t in y_ticks:
        grid.append(f'<line x1="{LEFT}" x2="{LEFT + inner_w}" y1="{py(t):.1f}" y2="{py(t):.1f}"/>')
        out.append(f'<text x="{LEFT - 6}" y="{py(t) + 4:.1f}" text-anchor="end">{_label(t, y_ticks)}</text>')
    out.append(f'<g stroke="#e5e5e5">{"".join(grid)}</g>')
    out.append(f'<rect x="{LEFT}" y="{TOP}" width="{inner_w}" height="{inner_h}" fill="none" stroke="#bbb"/>')
    for s in series:
        points = [(px(float(x)), py(float(y))) for x, y in zip(s.xs, s.ys, strict=True)]
        if s.symbol == "line":
            path = " ".join(f"{x:.1f},{y:.1f}" for x, y in points)
            out.append(f'<polyline points="{path}" fill="none" stroke="{s.colour}" stroke-width="2"/>')
            out.extend(_marker("circle", x, y, 2.5, s.colour) for x, y in points)
        else:
            out.append(f'<g data-series="{escape(s.name)}">')
            out.extend(_marker(s.symbol, x, y, s.size_px, s.colour) for x, y in points)
            out.append("</g>")
    for v in x_lines:
        if x_low <= v <= x_high:
            out.append(
                f'<line x1="{px(v):.1f}" x2="{px(v):.1f}" y1="{TOP}" y2="{TOP + inner_h}"'
                f' stroke="{line_colour}" stroke-width="2" stroke-dasharray="3 3"/>'
            )
    for v in y_lines:
        if y_low <= v <= y_high:
            out.append(
                f'<line x1="{LEFT}" x2="{LEFT + inner_w}" y1="{py(v):.1f}" y2="{py(v):.1f}"'
                f' stroke="{line_colour}" stroke-width="2" stroke-dasharray="3 3"/>'
            )
    # Legend, one row below the x label.
    x = LEFT
    y = TOP + inner_h + 62
    for s in series:
        if not s.xs:
            continue
        out.append(_marker("circle" if s.symbol == "line" else s.symbol, x + 5, y - 4, 4.5, s.colour))
        out.append(f'<text x="{x + 14}" y="{y}">{escape(s.name)}</text>')
        x += 24 + 7 * len(s.name)
    out.append("</svg>")
    return Markup("".join(out))
