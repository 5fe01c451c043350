"""Charts drawn on the server as inline SVG: no script, no font or library from the network.

A line chart has one x position per period; series may have gaps (None). Target lines are
drawn per period as dashed steps, so a revised target shows where it changed.
"""

from __future__ import annotations

import html
from collections.abc import Sequence
from dataclasses import dataclass

from markupsafe import Markup

#: Colour-blind-safe palette (Okabe-Ito), in drawing order.
PALETTE = ("#0072B2", "#D55E00", "#009E73", "#CC79A7", "#E69F00", "#56B4E9", "#000000", "#F0E442")


@dataclass(frozen=True)
class Series:
    """One line: a label and a value per period (None where there is no value)."""

    label: str
    values: tuple[float | None, ...]


@dataclass(frozen=True)
class Target:
    """A goal's target per period (None outside the goal's months); met per period when known."""

    label: str
    values: tuple[float | None, ...]
    met: tuple[bool | None, ...] = ()


def _nice_range(values: Sequence[float]) -> tuple[float, float]:
    low, high = min(values), max(values)
    if low == high:
        pad = abs(low) * 0.1 or 1.0
        return low - pad, high + pad
    pad = (high - low) * 0.08
    return (0.0 if low >= 0 and low - pad < 0 else low - pad), high + pad


def _fmt(value: float) -> str:
    if float(value).is_integer() and abs(value) < 1e9:
        return str(int(value))
    if abs(value) >= 100:
        return f"{value:.0f}"
    if abs(value) >= 10:
        return f"{value:.1f}"
    return f"{value:.2f}"


def line_chart(
    periods: Sequence[str],
    series: Sequence[Series],
    targets: Sequence[Target] = (),
    *,
    title: str,
    width: int = 560,
    height: int = 220,
) -> Markup:
    """An SVG line chart with dashed target steps; an empty note when there is nothing to draw."""
    points = [v for s in series for v in s.values if v is not None]
    points += [v for t in targets for v in t.values if v is not None]
    if not periods or not points:
        return Markup('<p class="muted">No values to chart.</p>')
    left, right, top, bottom = 48, 30, 22, 34
    plot_w, plot_h = width - left - right, height - top - bottom
    low, high = _nice_range(points)
    step = plot_w / max(len(periods) - 1, 1)

    def x(i: int) -> float:
        return left + (i * step if len(periods) > 1 else plot_w / 2)

    def y(value: float) -> float:
        return top + plot_h - (value - low) / (high - low) * plot_h

    parts = [
        f'<svg class="chart" role="img" aria-label="{html.escape(title)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{html.escape(title)}</title>",
        f'<text x="{left}" y="14" class="chart-title">{html.escape(title)}</text>',
    ]
    for k in range(5):
        tick = low + (high - low) * k / 4
        parts.append(
            f'<line x1="{left}" x2="{width - right}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" class="grid"/>'
            f'<text x="{left - 6}" y="{y(tick) + 4:.1f}" class="axis" text-anchor="end">{_fmt(tick)}</text>'
        )
    every = max(1, len(periods) // 8)
    for i, period in enumerate(periods):
        if i % every == 0 or i == len(periods) - 1:
            parts.append(
                f'<text x="{x(i):.1f}" y="{height - 12}" class="axis" text-anchor="middle">'
                f"{html.escape(period)}</text>"
            )
    for t_index, target in enumerate(targets):
        colour = PALETTE[(len(series) + t_index) % len(PALETTE)]
        half = step / 2 if len(periods) > 1 else plot_w / 4
        for i, value in enumerate(target.values):
            if value is None:
                continue
            parts.append(
                f'<line x1="{max(left, x(i) - half):.1f}" x2="{min(width - right, x(i) + half):.1f}" '
                f'y1="{y(value):.1f}" y2="{y(value):.1f}" class="target" stroke="{colour}">'
                f"<title>{html.escape(target.label)} {period_label(periods[i])}: {_fmt(value)}</title></line>"
            )
    for s_index, line in enumerate(series):
        colour = PALETTE[s_index % len(PALETTE)]
        segment: list[str] = []
        segments: list[list[str]] = []
        for i, value in enumerate(line.values):
            if value is None:
                if segment:
                    segments.append(segment)
                segment = []
                continue
            segment.append(f"{x(i):.1f},{y(value):.1f}")
            parts.append(
                f'<circle cx="{x(i):.1f}" cy="{y(value):.1f}" r="3" fill="{colour}">'
                f"<title>{html.escape(line.label)} {html.escape(periods[i])}: {_fmt(value)}</title></circle>"
            )
        if segment:
            segments.append(segment)
        for seg in segments:
            if len(seg) > 1:
                parts.append(
                    f'<polyline points="{" ".join(seg)}" fill="none" stroke="{colour}" class="line"/>'
                )
    legend_x = left
    for s_index, line in enumerate(series):
        colour = PALETTE[s_index % len(PALETTE)]
        parts.append(
            f'<rect x="{legend_x}" y="{height - 8}" width="10" height="3" fill="{colour}"/>'
            f'<text x="{legend_x + 14}" y="{height - 3}" class="legend">{html.escape(line.label)}</text>'
        )
        legend_x += 14 + 7 * len(line.label) + 16
    for t_index, target in enumerate(targets):
        colour = PALETTE[(len(series) + t_index) % len(PALETTE)]
        parts.append(
            f'<line x1="{legend_x}" x2="{legend_x + 10}" y1="{height - 6}" y2="{height - 6}" '
            f'class="target" stroke="{colour}"/>'
            f'<text x="{legend_x + 14}" y="{height - 3}" class="legend">{html.escape(target.label)}</text>'
        )
        legend_x += 14 + 7 * len(target.label) + 16
    parts.append("</svg>")
    return Markup("".join(parts))


def period_label(period: str) -> str:
    return html.escape(period)


def bar_chart(labels: Sequence[str], values: Sequence[float], *, title: str, width: int = 560) -> Markup:
    """Horizontal bars (e.g. complaints per issue); values must be non-negative."""
    if not labels:
        return Markup('<p class="muted">No values to chart.</p>')
    bar, gap, label_w = 18, 6, 220
    height = 24 + len(labels) * (bar + gap)
    biggest = max(*values, 1e-12)
    parts = [
        f'<svg class="chart" role="img" aria-label="{html.escape(title)}" width="{width}" height="{height}" '
        f'viewBox="0 0 {width} {height}" xmlns="http://www.w3.org/2000/svg">',
        f"<title>{html.escape(title)}</title>",
        f'<text x="0" y="14" class="chart-title">{html.escape(title)}</text>',
    ]
    for i, (label, value) in enumerate(zip(labels, values, strict=True)):
        y = 24 + i * (bar + gap)
        length = (width - label_w - 60) * value / biggest
        shown = label if len(label) <= 34 else label[:33] + "…"
        parts.append(
            f'<text x="0" y="{y + 13}" class="axis">{html.escape(shown)}</text>'
            f'<rect x="{label_w}" y="{y}" width="{length:.1f}" height="{bar}" fill="{PALETTE[0]}"/>'
            f'<text x="{label_w + length + 6:.1f}" y="{y + 13}" class="axis">{_fmt(value)}</text>'
        )
    parts.append("</svg>")
    return Markup("".join(parts))
