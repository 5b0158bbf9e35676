"""Small hand-written SVG charts for the evaluation report: bars, grouped bars, lines.

Each function returns one self-contained ``<svg>`` element (no scripts, no external references)
whose ``<title>`` is the chart's title, so it renders in any browser and in a saved file.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from html import escape

PALETTE = ("#2b6cb0", "#c05621", "#2f855a", "#6b46c1", "#b7791f", "#9b2c2c", "#4a5568")
_FONT = 'font-family="system-ui, sans-serif"'


def nice_ticks(low: float, high: float, count: int = 5) -> list[float]:
    """About ``count`` round tick values covering [low, high]."""
    if not math.isfinite(low) or not math.isfinite(high) or high <= low:
        return [low] if math.isfinite(low) else [0.0]
    raw = (high - low) / max(count, 1)
    mag = 10 ** math.floor(math.log10(raw))
    step = next(m * mag for m in (1, 2, 2.5, 5, 10) if m * mag >= raw)
    start = math.floor(low / step) * step
    ticks, value = [], start
    while value <= high + step * 1e-9:
        ticks.append(round(value, 12))
        value += step
    return ticks


def fmt_number(value: float) -> str:
    if value == 0:
        return "0"
    a = abs(value)
    if a >= 1e6:
        return f"{value / 1e6:.3g}M"
    if a >= 1e4:
        return f"{value / 1e3:.3g}k"
    if a >= 100:
        return f"{value:.0f}"
    if a >= 1:
        return f"{value:.3g}"
    if a >= 1e-3:
        return f"{value:.3g}"
    return f"{value:.1e}"


class _Frame:
    """Plot area inside margins, with a y scale (linear or log10) and the SVG parts written so far."""

    def __init__(self, title: str, width: int, height: int, y_max: float, *, y_min: float = 0.0, log: bool = False):
        self.title, self.width, self.height, self.log = title, width, height, log
        self.left, self.right, self.top, self.bottom = 56, 12, 30, 40
        self.y_min, self.y_max = y_min, y_max
        self.tick_format = fmt_number
        if log:
            self.y_min = 10 ** math.floor(math.log10(max(y_min, 1e-12)))
            self.y_max = 10 ** math.ceil(math.log10(max(y_max, self.y_min * 10)))
        elif y_max <= y_min:
            self.y_max = y_min + 1.0
        self.parts: list[str] = []

    @property
    def plot_w(self) -> float:
        return self.width - self.left - self.right

    @property
    def plot_h(self) -> float:
        return self.height - self.top - self.bottom

    def y(self, value: float) -> float:
        if self.log:
            v = math.log10(max(value, self.y_min))
            lo, hi = math.log10(self.y_min), math.log10(self.y_max)
        else:
            v, lo, hi = value, self.y_min, self.y_max
        frac = (v - lo) / (hi - lo) if hi > lo else 0.0
        return self.top + self.plot_h * (1 - min(max(frac, 0.0), 1.0))

    def axes(self, y_label: str = "", x_label: str = "") -> None:
        if self.log:
            ticks = [10.0**e for e in range(round(math.log10(self.y_min)), round(math.log10(self.y_max)) + 1)]
        else:
            ticks = nice_ticks(self.y_min, self.y_max)
        for t in ticks:
            if t > self.y_max + abs(self.y_max) * 1e-9 or t < self.y_min - abs(self.y_min) * 1e-9:
                continue
            yy = self.y(t)
            self.parts.append(
                f'<line x1="{self.left}" x2="{self.width - self.right}" y1="{yy:.1f}" y2="{yy:.1f}" '
                'stroke="#e2e8f0" stroke-width="1"/>'
                f'<text x="{self.left - 4}" y="{yy + 3:.1f}" text-anchor="end" font-size="10" fill="#4a5568">'
                f"{self.tick_format(t)}</text>"
            )
        base = self.top + self.plot_h
        self.parts.append(
            f'<line x1="{self.left}" x2="{self.width - self.right}" y1="{base}" y2="{base}" stroke="#718096"/>'
        )
        if y_label:
            mid = self.top + self.plot_h / 2
            self.parts.append(
                f'<text x="12" y="{mid:.1f}" font-size="10" fill="#4a5568" text-anchor="middle" '
                f'transform="rotate(-90 12 {mid:.1f})">{escape(y_label)}</text>'
            )
        if x_label:
            self.parts.append(
                f'<text x="{self.left + self.plot_w / 2:.1f}" y="{self.height - 4}" font-size="10" fill="#4a5568" '
                f'text-anchor="middle">{escape(x_label)}</text>'
            )

    def svg(self, legend: Sequence[tuple[str, str]] = ()) -> str:
        items = []
        x = self.left
        for name, color in legend:
            items.append(
                f'<rect x="{x}" y="{self.top - 12}" width="10" height="10" fill="{color}"/>'
                f'<text x="{x + 13}" y="{self.top - 3}" font-size="10" fill="#2d3748">{escape(name)}</text>'
            )
            x += 20 + 6 * len(name)
        head = (
            f'<svg class="chart" width="{self.width}" height="{self.height}" '
            f'viewBox="0 0 {self.width} {self.height}" role="img" {_FONT}>'
            f"<title>{escape(self.title)}</title>"
            f'<text x="{self.left}" y="13" font-size="12" font-weight="600" fill="#1a202c">{escape(self.title)}</text>'
        )
        return head + "".join(self.parts) + "".join(items) + "</svg>"


def bar_chart(
    values: Sequence[float],
    *,
    title: str,
    labels: Sequence[str] | None = None,
    width: int = 360,
    height: int = 200,
    color: str = PALETTE[0],
    y_label: str = "",
    x_label: str = "",
    reference: float | None = None,
    reference_label: str = "",
    log: bool = False,
    value_labels: bool = False,
) -> str:
    """Vertical bars; ``reference`` draws a dashed horizontal line (e.g. the even-use level)."""
    vals = [float(v) for v in values]
    top = max([*vals, reference or 0.0, 1e-12])
    positive = [v for v in vals if v > 0]
    frame = _Frame(
        title, width, height, top * (1 if log else 1.08), y_min=min(positive) if log and positive else 0.0, log=log
    )
    frame.axes(y_label, x_label)
    n = max(len(vals), 1)
    slot = frame.plot_w / n
    gap = slot * 0.15 if n <= 60 else 0.0
    for i, v in enumerate(vals):
        x = frame.left + i * slot + gap / 2
        y = frame.y(v) if v > 0 else frame.top + frame.plot_h
        h = frame.top + frame.plot_h - y
        frame.parts.append(
            f'<rect x="{x:.2f}" y="{y:.2f}" width="{max(slot - gap, 0.6):.2f}" height="{h:.2f}" fill="{color}">'
            f"<title>{escape(labels[i] if labels else str(i))}: {fmt_number(v)}</title></rect>"
        )
        if value_labels:
            frame.parts.append(
                f'<text x="{x + (slot - gap) / 2:.1f}" y="{y - 3:.1f}" font-size="9" text-anchor="middle" '
                f'fill="#2d3748">{fmt_number(v)}</text>'
            )
    if labels:
        every = max(1, math.ceil(n / 12))
        for i in range(0, n, every):
            x = frame.left + (i + 0.5) * slot
            frame.parts.append(
                f'<text x="{x:.1f}" y="{frame.top + frame.plot_h + 12}" font-size="9" text-anchor="middle" '
                f'fill="#4a5568">{escape(labels[i])}</text>'
            )
    if reference is not None:
        yy = frame.y(reference)
        frame.parts.append(
            f'<line x1="{frame.left}" x2="{width - frame.right}" y1="{yy:.1f}" y2="{yy:.1f}" stroke="#e53e3e" '
            f'stroke-dasharray="4 3"/><text x="{width - frame.right}" y="{yy - 3:.1f}" font-size="9" '
            f'text-anchor="end" fill="#e53e3e">{escape(reference_label)}</text>'
        )
    return frame.svg()


def grouped_bars(
    groups: Sequence[str],
    series: dict[str, Sequence[float]],
    *,
    title: str,
    width: int = 420,
    height: int = 220,
    y_label: str = "",
    x_label: str = "",
    y_max: float | None = None,
    percent: bool = False,
) -> str:
    """One cluster of bars per group (e.g. per depth), one colour per series, values written on top."""
    names = list(series)
    top = y_max if y_max is not None else max([max(v, default=0.0) for v in series.values()] + [1e-12]) * 1.15
    frame = _Frame(title, width, height, top)
    if percent:
        frame.tick_format = lambda t: f"{100 * t:.3g}%"
    frame.axes(y_label, x_label)
    slot = frame.plot_w / max(len(groups), 1)
    bar = slot * 0.8 / max(len(names), 1)
    legend = []
    for s, name in enumerate(names):
        color = PALETTE[s % len(PALETTE)]
        legend.append((name, color))
        for g, value in enumerate(series[name]):
            x = frame.left + g * slot + slot * 0.1 + s * bar
            y = frame.y(value)
            text = (
                "0"
                if value == 0
                else f"{100 * value:.1f}%"
                if percent and value >= 0.001
                else (f"{100 * value:.3f}%" if percent else fmt_number(value))
            )
            frame.parts.append(
                f'<rect x="{x:.1f}" y="{y:.1f}" width="{bar * 0.92:.1f}" height="{frame.top + frame.plot_h - y:.1f}" '
                f'fill="{color}"><title>{escape(name)}, {escape(groups[g])}: {text}</title></rect>'
                f'<text x="{x + bar * 0.46:.1f}" y="{y - 3:.1f}" font-size="9" text-anchor="middle" '
                f'fill="#2d3748">{text}</text>'
            )
    for g, group in enumerate(groups):
        frame.parts.append(
            f'<text x="{frame.left + (g + 0.5) * slot:.1f}" y="{frame.top + frame.plot_h + 13}" font-size="10" '
            f'text-anchor="middle" fill="#2d3748">{escape(group)}</text>'
        )
    return frame.svg(legend)


def line_chart(
    x: Sequence[float],
    series: dict[str, Sequence[float | None]],
    *,
    title: str,
    width: int = 420,
    height: int = 220,
    y_label: str = "",
    x_label: str = "",
) -> str:
    """Lines over a shared x axis; ``None`` values are gaps. Points are marked."""
    values = [float(v) for vs in series.values() for v in vs if v is not None]
    low = min(values, default=0.0)
    high = max(values, default=1.0)
    pad = (high - low) * 0.08 or abs(high) * 0.1 or 1.0
    frame = _Frame(title, width, height, high + pad, y_min=max(0.0, low - pad) if low >= 0 else low - pad)
    frame.axes(y_label, x_label)
    x_lo, x_hi = (min(x), max(x)) if x else (0.0, 1.0)
    span = (x_hi - x_lo) or 1.0

    def px(v: float) -> float:
        return frame.left + frame.plot_w * (v - x_lo) / span if x_hi > x_lo else frame.left + frame.plot_w / 2

    for t in nice_ticks(x_lo, x_hi, 6) if x_hi > x_lo else [x_lo]:
        if x_lo - 1e-9 <= t <= x_hi + 1e-9:
            frame.parts.append(
                f'<text x="{px(t):.1f}" y="{frame.top + frame.plot_h + 12}" font-size="9" text-anchor="middle" '
                f'fill="#4a5568">{fmt_number(t)}</text>'
            )
    legend = []
    for s, (name, vs) in enumerate(series.items()):
        color = PALETTE[s % len(PALETTE)]
        legend.append((name, color))
        points = [(px(xv), frame.y(float(v))) for xv, v in zip(x, vs, strict=False) if v is not None]
        if len(points) > 1:
            path = " ".join(f"{a:.1f},{b:.1f}" for a, b in points)
            frame.parts.append(f'<polyline points="{path}" fill="none" stroke="{color}" stroke-width="1.8"/>')
        for a, b in points:
            frame.parts.append(f'<circle cx="{a:.1f}" cy="{b:.1f}" r="2.2" fill="{color}"/>')
    return frame.svg(legend)
