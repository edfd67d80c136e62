"""A small SVG writer for the benchmark summary: line charts (linear or log axes) and horizontal bar charts.

Output is deterministic text (fixed decimals), so regenerating a plot from the same numbers gives the same file.
No plotting library: matplotlib is not a dependency of the project.
"""

from __future__ import annotations

import math
from html import escape
from typing import Optional, Sequence

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b", "#17becf", "#7f7f7f")
FONT = 'font-family="sans-serif" font-size="11"'


def tick_values(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round ticks covering [lo, hi]: a step of 1, 2 or 5 times a power of ten giving about ``count`` ticks."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo]
    raw = (hi - lo) / max(count - 1, 1)
    power = 10 ** math.floor(math.log10(raw))
    step = next(m * power for m in (1, 2, 5, 10) if m * power >= raw)
    first = math.ceil(lo / step - 1e-9)
    last = math.floor(hi / step + 1e-9)
    return [round(k * step, 12) for k in range(first, last + 1)]


def label(value: float) -> str:
    """Tick label: 1.5k / 2M for large values, plain otherwise."""
    magnitude = abs(value)
    if magnitude >= 1e6:
        return f"{value / 1e6:g}M"
    if magnitude >= 1e4:
        return f"{value / 1e3:g}k"
    if magnitude != 0 and magnitude < 1e-2:
        return f"{value:.0e}"
    return f"{value:.4g}"


class Axis:
    """Maps data values into pixels along one axis, linear or log10."""

    def __init__(self, lo: float, hi: float, start_px: float, end_px: float, log: bool):
        self.log = log
        if log:
            lo, hi = math.log10(lo), math.log10(hi)
        if hi - lo < 1e-12:
            lo, hi = lo - 0.5, hi + 0.5
        pad = 0.04 * (hi - lo)
        self.lo, self.hi = lo - pad, hi + pad
        self.start_px, self.end_px = start_px, end_px

    def __call__(self, value: float) -> float:
        v = math.log10(value) if self.log else value
        return self.start_px + (v - self.lo) / (self.hi - self.lo) * (self.end_px - self.start_px)

    def ticks(self) -> list[float]:
        if self.log:
            decades = range(math.floor(self.lo), math.floor(self.hi) + 1)
            ticks = [m * 10.0 ** d for d in decades for m in (1, 2, 5)]
            ticks = [t for t in ticks if self.lo <= math.log10(t) <= self.hi]
            return ticks if len(ticks) >= 2 else [10 ** self.lo, 10 ** self.hi]
        return [t for t in tick_values(self.lo, self.hi) if self.lo <= t <= self.hi]


def _frame(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" {FONT} role="img">\n<title>{escape(title)}</title>\n'
            f'<rect width="{width}" height="{height}" fill="#fff"/>\n'
            f'<text x="8" y="16" font-weight="bold">{escape(title)}</text>\n' + "\n".join(body) + "\n</svg>\n")


def _legend(labels: Sequence[str], x: float, y: float) -> list[str]:
    parts = []
    for i, text in enumerate(labels):
        color = PALETTE[i % len(PALETTE)]
        parts.append(f'<rect x="{x:.1f}" y="{y - 9:.1f}" width="10" height="10" fill="{color}"/>'
                     f'<text x="{x + 14:.1f}" y="{y:.1f}">{escape(text)}</text>')
        x += 6.2 * len(text) + 30
    return parts


def line_chart(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], title: str, x_label: str,
               y_label: str, log_x: bool = False, log_y: bool = False, width: int = 520, height: int = 300) -> str:
    """One polyline with markers per (label, xs, ys); points that are not finite (or not positive on a log axis)
    are left out."""
    def keep(x: float, y: float) -> bool:
        ok = math.isfinite(x) and math.isfinite(y)
        return ok and (x > 0 or not log_x) and (y > 0 or not log_y)

    cleaned = [(name, [(float(x), float(y)) for x, y in zip(xs, ys) if x is not None and y is not None
                       and keep(float(x), float(y))]) for name, xs, ys in series]
    points = [p for _, pts in cleaned for p in pts] or [(1.0, 1.0)]
    left, right, top, bottom = 64, width - 16, 44, height - 40
    x_axis = Axis(min(p[0] for p in points), max(p[0] for p in points), left, right, log_x)
    y_axis = Axis(min(p[1] for p in points), max(p[1] for p in points), bottom, top, log_y)
    body = [f'<rect x="{left}" y="{top}" width="{right - left}" height="{bottom - top}" fill="none" stroke="#999"/>']
    for t in x_axis.ticks():
        x = x_axis(t)
        body.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#eee"/>'
                    f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">{label(t)}</text>')
    for t in y_axis.ticks():
        y = y_axis(t)
        body.append(f'<line x1="{left}" y1="{y:.1f}" x2="{right}" y2="{y:.1f}" stroke="#eee"/>'
                    f'<text x="{left - 4}" y="{y + 4:.1f}" text-anchor="end">{label(t)}</text>')
    for i, (_, pts) in enumerate(cleaned):
        color = PALETTE[i % len(PALETTE)]
        xy = [(x_axis(x), y_axis(y)) for x, y in sorted(pts)]
        if len(xy) > 1:
            path = " ".join(f"{a:.1f},{b:.1f}" for a, b in xy)
            body.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.8" points="{path}"/>')
        body += [f'<circle cx="{a:.1f}" cy="{b:.1f}" r="3" fill="{color}"/>' for a, b in xy]
    body.append(f'<text x="{(left + right) / 2:.1f}" y="{height - 8}" text-anchor="middle">{escape(x_label)}</text>')
    body.append(f'<text transform="translate(14,{(top + bottom) / 2:.1f}) rotate(-90)" '
                f'text-anchor="middle">{escape(y_label)}</text>')
    body += _legend([name for name, _ in cleaned], left, 34)
    return _frame(width, height, title, body)


def bar_chart(categories: Sequence[str], groups: Sequence[tuple[str, Sequence[Optional[float]]]], title: str,
              value_label: str, stacked: bool = True, width: int = 620) -> str:
    """Horizontal bars, one row per category; ``groups`` are (label, one value per category), drawn stacked end to
    end (e.g. stage times adding up to a total) or side by side (e.g. peak memory per stage). None = no bar."""
    rows = len(categories)
    per_row = 18 if stacked else 6 * len(groups) + 8
    label_px = 8 + 6.2 * max((len(c) for c in categories), default=4)
    left, right, top = label_px + 8, width - 16, 44
    bottom = top + rows * per_row + 4
    height = bottom + 40
    totals = [sum(v[i] or 0.0 for _, v in groups) if stacked else max((v[i] or 0.0 for _, v in groups), default=0)
              for i in range(rows)]
    axis = Axis(0.0, max(totals, default=1.0) or 1.0, left, right, log=False)
    axis.lo = 0.0                                                     # bars start at zero
    body = [f'<rect x="{left:.1f}" y="{top}" width="{right - left:.1f}" height="{bottom - top}" fill="none" '
            f'stroke="#999"/>']
    for t in axis.ticks():
        x = axis(t)
        body.append(f'<line x1="{x:.1f}" y1="{top}" x2="{x:.1f}" y2="{bottom}" stroke="#eee"/>'
                    f'<text x="{x:.1f}" y="{bottom + 14}" text-anchor="middle">{label(t)}</text>')
    for i, category in enumerate(categories):
        y = top + 4 + i * per_row
        body.append(f'<text x="{left - 4:.1f}" y="{y + min(per_row, 18) / 2 + 3:.1f}" text-anchor="end">'
                    f'{escape(category)}</text>')
        start = 0.0
        for j, (_, values) in enumerate(groups):
            value = values[i]
            if value is None:
                continue
            color = PALETTE[j % len(PALETTE)]
            if stacked:
                x0, x1, y0, h = axis(start), axis(start + value), y, 14
                start += value
            else:
                x0, x1, y0, h = axis(0.0), axis(value), y + 6 * j, 5
            body.append(f'<rect x="{x0:.1f}" y="{y0:.1f}" width="{max(x1 - x0, 0.5):.1f}" height="{h}" '
                        f'fill="{color}"/>')
    body.append(f'<text x="{(left + right) / 2:.1f}" y="{height - 8}" text-anchor="middle">'
                f'{escape(value_label)}</text>')
    body += _legend([name for name, _ in groups], left, 34)
    return _frame(width, height, title, body)
