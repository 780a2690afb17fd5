"""Small server-rendered SVG charts over time for the admin console (no script, nothing fetched).

Each chart is a picture of figures the page also gives as a table: the SVG is `role="img"`
with a label, its bars and points carry a `<title>` for pointer users, and the table is what a
screen reader or a keyboard user reads.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import date

from django.utils.html import format_html, format_html_join
from django.utils.safestring import SafeString

# Series colours, as classes (dashboard.css): distinguishable, and each at least 3:1 against
# the admin's light and dark backgrounds.
SERIES = 7


def _axis_labels(buckets: Sequence[date], width: int, height: int) -> SafeString:
    if not buckets:
        return SafeString("")
    first, last = buckets[0], buckets[-1]
    return format_html(
        '<text x="0" y="{h}">{first}</text><text x="{w}" y="{h}" text-anchor="end">{last}</text>',
        w=width,
        h=height,
        first=f"{first:%b %d}",
        last=f"{last:%b %d}",
    )


def stacked_chart(
    buckets: Sequence[date],
    series: Sequence[tuple[str, Sequence[float]]],
    *,
    label: str,
    unit: str = "",
    width: int = 560,
    height: int = 150,
) -> SafeString:
    """One bar per bucket, the series stacked in it (series i coloured `s{i % SERIES}`)."""
    if not buckets:
        return format_html('<p class="help">{}</p>', "No data in the range.")
    totals = [sum(values[i] for _, values in series) for i in range(len(buckets))]
    top = max([*totals, 0]) or 1
    slot = width / len(buckets)
    plot = height - 20
    parts = []
    for i, day in enumerate(buckets):
        y = height - 16.0
        for n, (name, values) in enumerate(series):
            value = values[i]
            if not value:
                continue
            h = plot * value / top
            y -= h
            title = f"{day:%b %d}, {name}: {_figure(value, unit)}"
            parts.append(
                (
                    title,
                    f"s{n % SERIES}",
                    *(f"{v:.1f}" for v in (i * slot + 1, y, max(slot - 2, 1), h)),
                )
            )
    body = format_html_join(
        "",
        '<rect class="{1}" x="{2}" y="{3}" width="{4}" height="{5}"><title>{0}</title></rect>',
        parts,
    )
    return format_html(
        '<svg class="chart" viewBox="0 0 {w} {h}" role="img" aria-label="{label}">'
        "{body}{axis}</svg>",
        w=width,
        h=height,
        label=label,
        body=body,
        axis=_axis_labels(buckets, width, height),
    )


def line_chart(
    buckets: Sequence[date],
    series: Sequence[tuple[str, Sequence[float | None]]],
    *,
    label: str,
    unit: str = "",
    width: int = 560,
    height: int = 150,
) -> SafeString:
    """One line per series; a bucket without a value (None) breaks the line there."""
    if not buckets:
        return format_html('<p class="help">{}</p>', "No data in the range.")
    values = [v for _, vs in series for v in vs if v is not None]
    top = max([*values, 0]) or 1
    slot = width / len(buckets)
    plot = height - 24

    def point(i: int, v: float) -> tuple[float, float]:
        return i * slot + slot / 2, height - 16 - plot * v / top

    lines, dots = [], []
    for n, (name, vs) in enumerate(series):
        runs: list[list[str]] = [[]]
        for i, v in enumerate(vs):
            if v is None:
                runs.append([])
                continue
            x, y = point(i, v)
            runs[-1].append(f"{x:.1f},{y:.1f}")
            title = f"{buckets[i]:%b %d}, {name}: {_figure(v, unit)}"
            dots.append((title, f"s{n % SERIES}", f"{x:.1f}", f"{y:.1f}"))
        lines += [(f"s{n % SERIES}", " ".join(run)) for run in runs if len(run) > 1]
    body = format_html_join("", '<polyline class="{0}" points="{1}"/>', lines)
    marks = format_html_join(
        "", '<circle class="{1}" cx="{2}" cy="{3}" r="4"><title>{0}</title></circle>', dots
    )
    return format_html(
        '<svg class="chart lines" viewBox="0 0 {w} {h}" role="img" aria-label="{label}">'
        "{body}{marks}{axis}</svg>",
        w=width,
        h=height,
        label=label,
        body=body,
        marks=marks,
        axis=_axis_labels(buckets, width, height),
    )


def _figure(value: float, unit: str) -> str:
    if unit == "$":
        return f"${value:.4f}"
    if unit == "h":
        return f"{value:.1f} h"
    return f"{value:g}{unit}"
