"""Charts as inline SVG, drawn on the server: no JavaScript library, nothing fetched from a
CDN, and a page reads the same with scripts off. Hand-written because the charts are simple
(lines over sample index, bars of counts) and a plotting library would ship a megabyte of JS
to draw them."""

from __future__ import annotations

from collections.abc import Sequence
from html import escape

from markupsafe import Markup

PALETTE = ("#2563eb", "#dc2626", "#16a34a", "#9333ea", "#ea580c")
WIDTH, HEIGHT = 520, 170
PAD_LEFT, PAD_RIGHT, PAD_TOP, PAD_BOTTOM = 48, 10, 12, 22


def _fmt(value: float) -> str:
    return f"{value:.3g}"


def line_chart(
    series: dict[str, Sequence[float | None]],
    *,
    title: str,
    unit: str,
    labels: Sequence[str] = (),
    reference: tuple[str, float] | None = None,
) -> Markup:
    """Lines over the sample index, one per named series; ``None`` values leave a gap.
    Every sample is a ``<circle class="point">`` (a tooltip gives its value). ``reference``:
    a dashed horizontal line (e.g. a budget). Empty when no series has a value."""
    values = [v for points in series.values() for v in points if v is not None]
    if reference is not None:
        values.append(reference[1])
    if not values:
        return Markup(
            f'<figure class="chart empty"><figcaption>{escape(title)}</figcaption>'
            "<p>no data yet</p></figure>"
        )
    low, high = min(0.0, min(values)), max(values)
    high = high if high > low else low + 1.0
    count = max(len(points) for points in series.values())
    inner_w = WIDTH - PAD_LEFT - PAD_RIGHT
    inner_h = HEIGHT - PAD_TOP - PAD_BOTTOM

    def x(index: int) -> float:
        return PAD_LEFT + (inner_w * index / (count - 1) if count > 1 else inner_w / 2)

    def y(value: float) -> float:
        return PAD_TOP + inner_h * (1 - (value - low) / (high - low))

    parts = [
        f'<svg class="chart-svg" viewBox="0 0 {WIDTH} {HEIGHT}" role="img" '
        f'aria-label="{escape(title)}">',
        f'<line class="axis" x1="{PAD_LEFT}" y1="{PAD_TOP + inner_h}" x2="{WIDTH - PAD_RIGHT}" '
        f'y2="{PAD_TOP + inner_h}"/>',
        f'<text class="tick" x="{PAD_LEFT - 4}" y="{y(high) + 4:.1f}" text-anchor="end">'
        f"{_fmt(high)}</text>",
        f'<text class="tick" x="{PAD_LEFT - 4}" y="{y(low) + 4:.1f}" text-anchor="end">'
        f"{_fmt(low)}</text>",
    ]
    if reference is not None:
        name, level = reference
        parts.append(
            f'<line class="reference" x1="{PAD_LEFT}" x2="{WIDTH - PAD_RIGHT}" '
            f'y1="{y(level):.1f}" y2="{y(level):.1f}"><title>{escape(name)} '
            f"{_fmt(level)} {escape(unit)}</title></line>"
        )
    for number, (name, points) in enumerate(series.items()):
        color = PALETTE[number % len(PALETTE)]
        runs: list[list[str]] = [[]]
        for index, value in enumerate(points):
            if value is None:
                runs.append([])
                continue
            runs[-1].append(f"{x(index):.1f},{y(value):.1f}")
        for run in runs:
            if len(run) > 1:
                parts.append(
                    f'<polyline class="line" fill="none" stroke="{color}" '
                    f'points="{" ".join(run)}"/>'
                )
        for index, value in enumerate(points):
            if value is None:
                continue
            label = labels[index] if index < len(labels) else f"#{index + 1}"
            parts.append(
                f'<circle class="point" data-series="{escape(name)}" cx="{x(index):.1f}" '
                f'cy="{y(value):.1f}" r="2.5" fill="{color}"><title>{escape(name)} '
                f"{_fmt(value)} {escape(unit)} ({escape(label)})</title></circle>"
            )
    parts.append("</svg>")
    legend = "".join(
        f'<span class="key"><i style="background:{PALETTE[n % len(PALETTE)]}"></i>'
        f"{escape(name)}</span>"
        for n, name in enumerate(series)
    )
    return Markup(
        f'<figure class="chart"><figcaption>{escape(title)} <small>({escape(unit)})</small> '
        f"{legend}</figcaption>{''.join(parts)}</figure>"
    )


def bar(parts: Sequence[tuple[str, int, str]], total: int) -> Markup:
    """One horizontal stacked bar: ``(css class, count, label)`` parts out of ``total``."""
    if total <= 0:
        return Markup('<div class="bar"></div>')
    segments = "".join(
        f'<span class="seg {escape(css)}" style="width:{100 * count / total:.2f}%" '
        f'title="{escape(label)}: {count}"></span>'
        for css, count, label in parts
        if count
    )
    return Markup(f'<div class="bar">{segments}</div>')
