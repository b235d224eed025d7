"""Server-side SVG charts for the admin: no JavaScript, no CDN, no chart library.

One kind is enough for the operators' pages: stacked bars, one bar per label (a day), one
coloured segment per series. Every segment is a `<rect class="bar">` that names its series,
label and value in data- attributes and a `<title>` (the browser's tooltip), so a page, a test
or a screen reader can read the figures back from the drawing.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from django.utils.html import escape
from django.utils.safestring import SafeString, mark_safe

# Distinct on white and on the admin's dark theme; the last one is for a summed "other" series.
PALETTE = ("#417690", "#e0a030", "#5b9e4d", "#c0504d", "#8064a2", "#4bacc6", "#f79646", "#9bbb59", "#7f7f7f")


@dataclass(frozen=True)
class ChartSeries:
    label: str
    values: list[float]  # one per chart label
    color: str = ""


def series_colors(count: int) -> list[str]:
    """The colour of each of `count` series, in order (the palette repeats past its length)."""
    return [PALETTE[i % len(PALETTE)] for i in range(count)]


def nice_ceiling(value: float, ticks: int = 4) -> tuple[float, float]:
    """(top, step): the smallest top >= value that splits into `ticks` steps of 1, 2 or 5 x 10^k."""
    if value <= 0:
        return 1.0, 1.0 / ticks
    raw = value / ticks
    power = 10 ** math.floor(math.log10(raw))
    for factor in (1, 2, 2.5, 5, 10):
        step = factor * power
        if step * ticks >= value:
            return step * ticks, step
    return 10 * power * ticks, 10 * power  # not reached: factor 10 always covers value


def number_text(value: float) -> str:
    """A figure as a label shows it: whole numbers without decimals, others to 3 places; thousands
    grouped (1,500,000)."""
    if abs(value - round(value)) < 1e-9:
        return f"{round(value):,}"
    return f"{value:,.3f}".rstrip("0").rstrip(".")


def stacked_bars_svg(*, labels: list[str], series: list[ChartSeries], title: str, unit: str = "",
                     width: int = 960, height: int = 300) -> SafeString:
    """An SVG of stacked bars: bar i stacks series[k].values[i] for every k, in series order from
    the bottom. Segments with a value of 0 are not drawn. `title` names the chart for screen
    readers; `unit` follows each value in the tooltips."""
    left, right, top, bottom = 64, 12, 12, 42
    plot_w, plot_h = width - left - right, height - top - bottom
    n = max(len(labels), 1)
    stacks = [sum(s.values[i] for s in series) for i in range(len(labels))]
    y_top, y_step = nice_ceiling(max(stacks, default=0.0))
    slot = plot_w / n
    bar_w = max(1.0, slot * 0.72)
    colors = series_colors(len(series))

    def y_of(value: float) -> float:
        return top + plot_h - plot_h * value / y_top

    out = [f'<svg xmlns="http://www.w3.org/2000/svg" class="usage-chart" role="img" width="{width}" '
           f'height="{height}" viewBox="0 0 {width} {height}" aria-label="{escape(title)}">',
           f"<title>{escape(title)}</title>",
           '<g class="axis" font-size="11" fill="currentColor">']
    ticks = round(y_top / y_step)
    for t in range(ticks + 1):
        value = t * y_step
        y = y_of(value)
        out.append(f'<line x1="{left}" x2="{width - right}" y1="{y:.1f}" y2="{y:.1f}" stroke="#8884" />')
        out.append(f'<text x="{left - 6}" y="{y + 4:.1f}" text-anchor="end">{number_text(value)}</text>')
    every = max(1, math.ceil(len(labels) / 12))  # at most about 12 labels under the bars
    for i, label in enumerate(labels):
        if i % every == 0 or i == len(labels) - 1:
            x = left + slot * (i + 0.5)
            out.append(f'<text x="{x:.1f}" y="{height - bottom + 16}" text-anchor="middle">{escape(label)}</text>')
    out.append("</g>")
    out.append('<g class="bars">')
    suffix = f" {unit}" if unit else ""
    for i, label in enumerate(labels):
        x = left + slot * i + (slot - bar_w) / 2
        base = 0.0
        for k, s in enumerate(series):
            value = s.values[i]
            if value <= 0:
                continue
            y0, y1 = y_of(base), y_of(base + value)
            base += value
            tip = f"{label} · {s.label}: {number_text(value)}{suffix}"
            out.append(
                f'<rect class="bar" x="{x:.1f}" y="{y1:.1f}" width="{bar_w:.1f}" height="{max(y0 - y1, 0.5):.1f}" '
                f'fill="{escape(s.color or colors[k])}" data-series="{escape(s.label)}" data-label="{escape(label)}" '
                f'data-value="{value:.12g}"><title>{escape(tip)}</title></rect>')
    out.append("</g>")
    out.append(f'<line x1="{left}" x2="{width - right}" y1="{top + plot_h}" y2="{top + plot_h}" stroke="currentColor" />')
    out.append("</svg>")
    return mark_safe("".join(out))  # every text above went through escape()
