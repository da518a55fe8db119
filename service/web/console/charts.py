"""Line charts as server-rendered SVG: the geometry here, the markup in ``_chart.html``.

No chart library and no script: a page's chart is a few ``<polyline>`` elements computed
from the same numbers the page's table shows (the table, in a ``<details>``, is the chart's
text alternative).
"""

from __future__ import annotations

import datetime as dt
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass


@dataclass(frozen=True)
class Series:
    key: str  # the bucket's field
    label: str
    css: str  # the class that colours its line and legend swatch


# The overview's four counts per bucket, in the order the legend lists them.
VIEW_SERIES = (
    Series("received", "Received", "s-received"),
    Series("delivered", "Delivered", "s-delivered"),
    Series("filtered", "Filtered", "s-filtered"),
    Series("failed", "Failed", "s-failed"),
)


@dataclass(frozen=True)
class Line:
    series: Series
    points: str  # "x,y x,y ..." for <polyline points>
    total: int


@dataclass(frozen=True)
class Chart:
    title: str
    width: int
    height: int
    left: int
    top: int
    right: int
    bottom: int
    lines: list[Line]
    y_ticks: list[tuple[float, str]]  # (y, label)
    x_labels: list[tuple[float, str]]  # (x, label)
    rows: list[tuple[str, list[int]]]  # (bucket label, a value per series): the table


def nice_ceiling(value: float) -> int:
    """The smallest of 1, 2, 5 x 10^k at or above ``value`` (at least 1)."""
    if value <= 1:
        return 1
    power = 10 ** math.floor(math.log10(value))
    for step in (1, 2, 5, 10):
        if value <= step * power:
            return int(step * power)
    raise AssertionError("unreachable")


def line_chart(buckets: Sequence[dict], *, title: str, label: Callable[[dt.datetime], str],
               label_every: int, series: Sequence[Series] = VIEW_SERIES, width: int = 720,
               height: int = 220) -> Chart:
    """Lay out one line per series over ``buckets`` (each with a ``start`` and the series'
    counts), oldest first; an x label every ``label_every`` buckets."""
    left, top, right, bottom = 48, 12, width - 12, height - 28
    peak = nice_ceiling(max((int(b.get(s.key) or 0) for b in buckets for s in series),
                            default=0))
    n = len(buckets)

    def x(i: int) -> float:
        return left + (right - left) * (i / (n - 1) if n > 1 else 0.5)

    def y(value: int) -> float:
        return bottom - (bottom - top) * value / peak

    lines = [Line(s, " ".join(f"{x(i):.1f},{y(int(b.get(s.key) or 0)):.1f}"
                              for i, b in enumerate(buckets)),
                  sum(int(b.get(s.key) or 0) for b in buckets)) for s in series]
    # peak is 1, 2 or 5 x 10^k, so a fifth of it is a whole step from 5 up.
    ticks = [(y(v), f"{v:,}") for v in range(0, peak + 1, max(1, peak // 5))]
    x_labels = [(x(i), label(b["start"])) for i, b in enumerate(buckets)
                if (n - 1 - i) % label_every == 0]
    rows = [(label(b["start"]), [int(b.get(s.key) or 0) for s in series]) for b in buckets]
    return Chart(title, width, height, left, top, right, bottom, lines, ticks, x_labels, rows)


def hour_label(start: dt.datetime) -> str:
    return start.strftime("%H:00")


def day_label(start: dt.datetime) -> str:
    return start.strftime("%b %d")
