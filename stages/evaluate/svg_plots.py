"""Small inline-SVG plots for the report (no plotting library): line plots and 2-D trajectory plots.

Each function returns an ``<svg>`` element as a string, with a ``<title>`` for accessibility, axes with a few ticks,
and a legend. Coordinates are data units mapped into a fixed pixel box.
"""

from __future__ import annotations

import math
from html import escape
from typing import Callable, Sequence

import numpy as np

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#9467bd", "#ff7f0e", "#8c564b")
MARGIN = {"left": 56, "right": 12, "top": 40, "bottom": 38}   # title on the first line, legend on the second


def nice_ticks(lo: float, hi: float, count: int = 5) -> list[float]:
    """Round tick values in [lo, hi]: the step of 1, 2 or 5 times a power of ten whose tick count is nearest to
    ``count`` (the larger step on ties)."""
    if not (math.isfinite(lo) and math.isfinite(hi)) or hi <= lo:
        return [lo] if math.isfinite(lo) else [0.0]
    power = 10 ** math.floor(math.log10((hi - lo) / max(count - 1, 1)))
    steps = [m * power for m in (0.5, 1, 2, 5, 10, 20)]
    n_ticks = lambda step: math.floor(hi / step + 1e-9) - math.ceil(lo / step - 1e-9) + 1
    step = min(reversed(steps), key=lambda st: abs(n_ticks(st) - count))
    first = math.ceil(lo / step - 1e-9)
    return [round((first + k) * step, 12) for k in range(n_ticks(step))]


def _fmt(value: float) -> str:
    if value == 0:
        return "0"
    magnitude = abs(value)
    if magnitude >= 1e4 or magnitude < 1e-3:
        return f"{value:.1e}"
    return f"{value:.4g}"


class _Frame:
    """Maps data coordinates into the plot box of a width x height SVG."""

    def __init__(self, width: int, height: int, x_range: tuple[float, float], y_range: tuple[float, float]):
        self.width, self.height = width, height
        self.x0, self.x1 = x_range
        self.y0, self.y1 = y_range
        self.left, self.top = MARGIN["left"], MARGIN["top"]
        self.right, self.bottom = width - MARGIN["right"], height - MARGIN["bottom"]

    def x(self, value: float) -> float:
        return self.left + (value - self.x0) / (self.x1 - self.x0) * (self.right - self.left)

    def y(self, value: float) -> float:
        return self.bottom - (value - self.y0) / (self.y1 - self.y0) * (self.bottom - self.top)


def _padded(lo: float, hi: float, fraction: float = 0.05) -> tuple[float, float]:
    if not (math.isfinite(lo) and math.isfinite(hi)):
        return 0.0, 1.0
    if hi - lo < 1e-12:
        pad = max(abs(lo) * 0.1, 1e-3)
        return lo - pad, hi + pad
    pad = (hi - lo) * fraction
    return lo - pad, hi + pad


def _axes(frame: _Frame, x_ticks: Sequence[float], y_ticks: Sequence[float], x_label: str, y_label: str,
          title: str, y_format: Callable[[float], str] = _fmt) -> list[str]:
    parts = [f'<rect x="{frame.left}" y="{frame.top}" width="{frame.right - frame.left}" '
             f'height="{frame.bottom - frame.top}" fill="#fff" stroke="#999"/>']
    for t in x_ticks:
        if frame.x0 <= t <= frame.x1:
            x = frame.x(t)
            parts.append(f'<line x1="{x:.1f}" y1="{frame.bottom}" x2="{x:.1f}" y2="{frame.top}" stroke="#eee"/>')
            parts.append(f'<text x="{x:.1f}" y="{frame.bottom + 14}" text-anchor="middle">{_fmt(t)}</text>')
    for t in y_ticks:
        if frame.y0 <= t <= frame.y1:
            y = frame.y(t)
            parts.append(f'<line x1="{frame.left}" y1="{y:.1f}" x2="{frame.right}" y2="{y:.1f}" stroke="#eee"/>')
            parts.append(f'<text x="{frame.left - 4}" y="{y + 4:.1f}" text-anchor="end">{y_format(t)}</text>')
    parts.append(f'<text x="{(frame.left + frame.right) / 2:.1f}" y="{frame.height - 6}" '
                 f'text-anchor="middle">{escape(x_label)}</text>')
    parts.append(f'<text transform="translate(12,{(frame.top + frame.bottom) / 2:.1f}) rotate(-90)" '
                 f'text-anchor="middle">{escape(y_label)}</text>')
    parts.append(f'<text x="8" y="14" font-weight="bold">{escape(title)}</text>')
    return parts


def _legend(frame: _Frame, labels: Sequence[str], colors: Sequence[str]) -> list[str]:
    """One row of coloured squares and labels under the title."""
    parts, x = [], frame.left
    for label, color in zip(labels, colors):
        parts.append(f'<rect x="{x}" y="22" width="10" height="10" fill="{color}"/>')
        parts.append(f'<text x="{x + 14}" y="31">{escape(label)}</text>')
        x += 6.5 * len(label) + 30
    return parts


def _svg(width: int, height: int, title: str, body: list[str]) -> str:
    return (f'<svg xmlns="http://www.w3.org/2000/svg" class="plot" width="{width}" height="{height}" '
            f'viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="11" role="img">'
            f'<title>{escape(title)}</title>' + "".join(body) + "</svg>")


def line_plot(series: Sequence[tuple[str, Sequence[float], Sequence[float]]], title: str, x_label: str,
              y_label: str, width: int = 460, height: int = 260, log_y: bool = False) -> str:
    """Lines through (x, y) points, one per (label, xs, ys); non-finite points are skipped. log_y: y on a log10
    axis (ticks labelled with the values; y <= 0 skipped)."""
    cleaned = []
    for label, xs, ys in series:
        x, y = np.asarray(xs, np.float64), np.asarray(ys, np.float64)
        keep = np.isfinite(x) & np.isfinite(y) & ((y > 0) if log_y else True)
        cleaned.append((label, x[keep], np.log10(y[keep]) if log_y else y[keep]))
    all_x = np.concatenate([c[1] for c in cleaned]) if cleaned else np.zeros(0)
    all_y = np.concatenate([c[2] for c in cleaned]) if cleaned else np.zeros(0)
    x_range = (float(all_x.min()), float(all_x.max())) if all_x.size else (0.0, 1.0)
    if x_range[1] <= x_range[0]:
        x_range = (x_range[0] - 0.5, x_range[0] + 0.5)
    y_range = _padded(float(all_y.min()), float(all_y.max())) if all_y.size else (0.0, 1.0)
    frame = _Frame(width, height, x_range, y_range)
    y_ticks = nice_ticks(*y_range)
    if log_y:  # ticks at powers of ten where the range spans at least two of them
        decades = list(range(math.ceil(y_range[0]), math.floor(y_range[1]) + 1))
        y_ticks = [float(d) for d in decades] if len(decades) >= 2 else y_ticks
    body = _axes(frame, nice_ticks(*x_range), y_ticks, x_label, y_label, title,
                 y_format=(lambda t: _fmt(10**t)) if log_y else _fmt)
    colors = [PALETTE[i % len(PALETTE)] for i in range(len(cleaned))]
    for (label, x, y), color in zip(cleaned, colors):
        if x.size == 0:
            continue
        points = " ".join(f"{frame.x(a):.1f},{frame.y(b):.1f}" for a, b in zip(x, y))
        body.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.6" points="{points}"/>')
    body += _legend(frame, [c[0] for c in cleaned], colors)
    return _svg(width, height, title, body)


def trajectory_plot(tracks: Sequence[tuple[str, np.ndarray]], title: str, width: int = 460,
                    height: int = 360, markers: Sequence[tuple[str, np.ndarray]] = ()) -> str:
    """Camera centres (N, 3) of each track, drawn as polylines in time order on the plane of the two principal
    directions of all centres (equal scale on both axes); ``markers`` are drawn as dots only."""
    everything = [np.asarray(t, np.float64).reshape(-1, 3) for _, t in list(tracks) + list(markers)]
    stacked = np.concatenate(everything) if everything else np.zeros((0, 3))
    if len(stacked) >= 2:
        centre = stacked.mean(0)
        _, _, vt = np.linalg.svd(stacked - centre, full_matrices=False)
        axes = vt[:2] if len(vt) >= 2 else np.eye(3)[:2]
    else:
        centre, axes = np.zeros(3), np.eye(3)[:2]
    project = lambda p: (np.asarray(p, np.float64).reshape(-1, 3) - centre) @ axes.T           # (N, 2)
    flat = project(stacked) if len(stacked) else np.zeros((1, 2))
    lo, hi = flat.min(0), flat.max(0)
    box_w, box_h = width - MARGIN["left"] - MARGIN["right"], height - MARGIN["top"] - MARGIN["bottom"]
    span = max((hi - lo)[0] / box_w, (hi - lo)[1] / box_h, 1e-12) * 1.1          # data units per pixel
    mid = (lo + hi) / 2
    x_range = (mid[0] - span * box_w / 2, mid[0] + span * box_w / 2)
    y_range = (mid[1] - span * box_h / 2, mid[1] + span * box_h / 2)
    frame = _Frame(width, height, x_range, y_range)
    body = _axes(frame, nice_ticks(*x_range), nice_ticks(*y_range), "principal axis 1", "principal axis 2", title)
    labels, colors = [], []
    for i, (label, points) in enumerate(tracks):
        color = PALETTE[i % len(PALETTE)]
        xy = project(points)
        path = " ".join(f"{frame.x(a):.1f},{frame.y(b):.1f}" for a, b in xy)
        dash = ' stroke-dasharray="5,3"' if i else ""      # later tracks dashed, so coinciding ones stay visible
        body.append(f'<polyline fill="none" stroke="{color}" stroke-width="1.4"{dash} points="{path}"/>')
        if len(xy):
            body.append(f'<circle cx="{frame.x(xy[0, 0]):.1f}" cy="{frame.y(xy[0, 1]):.1f}" r="3.5" '
                        f'fill="none" stroke="{color}"/>')
        labels.append(label)
        colors.append(color)
    for j, (label, points) in enumerate(markers):
        color = PALETTE[(len(tracks) + j) % len(PALETTE)]
        for a, b in project(points):
            body.append(f'<circle cx="{frame.x(a):.1f}" cy="{frame.y(b):.1f}" r="2.6" fill="{color}"/>')
        labels.append(label)
        colors.append(color)
    body += _legend(frame, labels, colors)
    return _svg(width, height, title, body)
