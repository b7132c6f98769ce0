"""Small line charts as inline SVG, drawn on the server (no chart library, nothing to fetch):
one or two series over the last minutes, their latest and highest values in the caption."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

WIDTH, HEIGHT, PAD = 320, 64, 2


@dataclass(frozen=True)
class Series:
    label: str
    values: Sequence[float]
    css: str  # the stroke's class in dashboard.css


def line_chart(title: str, unit: str, series: Sequence[Series]) -> str:
    """An <svg> (with a <title> for screen readers) of the series on one shared scale."""
    peak = max((v for s in series for v in s.values), default=0.0)
    top = peak or 1.0  # the scale (all zeros: a flat line at the bottom)
    lines = []
    for s in series:
        n = len(s.values)
        if n == 0:
            continue
        step = (WIDTH - 2 * PAD) / max(n - 1, 1)
        points = " ".join(
            f"{PAD + i * step:.1f},{HEIGHT - PAD - (v / top) * (HEIGHT - 2 * PAD):.1f}"
            for i, v in enumerate(s.values)
        )
        lines.append(f'<polyline class="{s.css}" points="{points}"/>')
    last = [(s.label, _fmt(s.values[-1] if s.values else 0.0)) for s in series]
    latest = last[0][1] if len(last) == 1 else ", ".join(f"{n} {v}" for n, v in last)
    return (
        f'<figure class="chart"><svg viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'preserveAspectRatio="none"><title>{title}: {latest} {unit}</title>'
        f'<line class="axis" x1="0" y1="{HEIGHT - PAD}" x2="{WIDTH}" y2="{HEIGHT - PAD}"/>'
        f"{''.join(lines)}</svg>"
        f"<figcaption>{title} <span>now {latest} {unit} · max {_fmt(peak)}</span></figcaption>"
        "</figure>"
    )


def _fmt(value: float) -> str:
    if value >= 100 or value == int(value):
        return f"{value:.0f}"
    return f"{value:.2f}" if value < 10 else f"{value:.1f}"
