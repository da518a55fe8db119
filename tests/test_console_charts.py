"""The console's SVG charts: the scale, and points placed where the numbers say."""

from __future__ import annotations

import datetime as dt

import pytest

from service.web.console.charts import VIEW_SERIES, hour_label, line_chart, nice_ceiling

T0 = dt.datetime(2026, 1, 5, 0, 0, tzinfo=dt.UTC)


@pytest.mark.parametrize(("value", "expected"), [
    (0, 1), (1, 1), (1.5, 2), (2, 2), (3, 5), (5, 5), (6, 10), (10, 10), (11, 20),
    (99, 100), (101, 200), (250, 500), (999_999, 1_000_000),
])
def test_the_scale_is_the_next_round_number(value, expected):
    assert nice_ceiling(value) == expected


def buckets(values: list[int]) -> list[dict]:
    return [{"start": T0 + dt.timedelta(hours=i), "received": v, "delivered": v // 2,
             "filtered": 0, "failed": 0} for i, v in enumerate(values)]


def points(chart, key: str) -> list[tuple[float, float]]:
    [line] = [line for line in chart.lines if line.series.key == key]
    return [tuple(map(float, p.split(","))) for p in line.points.split()]


def test_points_are_placed_by_value_and_time():
    chart = line_chart(buckets([0, 50, 100]), title="t", label=hour_label, label_every=1)
    received = points(chart, "received")
    assert [x for x, _ in received] == [chart.left, (chart.left + chart.right) / 2, chart.right]
    assert [y for _, y in received] == [chart.bottom, (chart.top + chart.bottom) / 2, chart.top]
    assert [line.total for line in chart.lines] == [150, 75, 0, 0]
    assert [s.key for s in (line.series for line in chart.lines)] == [
        s.key for s in VIEW_SERIES]
    # The table holds the same numbers, a row a bucket.
    assert chart.rows[1] == ("01:00", [50, 25, 0, 0])


def test_axis_labels_end_at_the_newest_bucket_and_ticks_at_round_numbers():
    chart = line_chart(buckets(list(range(24))), title="t", label=hour_label, label_every=6)
    assert [label for _, label in chart.x_labels] == ["05:00", "11:00", "17:00", "23:00"]
    assert [label for _, label in chart.y_ticks] == ["0", "10", "20", "30", "40", "50"]


def test_an_empty_period_draws_flat_lines_on_a_scale_of_one():
    chart = line_chart(buckets([0] * 24), title="t", label=hour_label, label_every=3)
    assert {y for _, y in points(chart, "received")} == {chart.bottom}
    assert [label for _, label in chart.y_ticks] == ["0", "1"]


def test_large_counts_are_labelled_with_separators():
    chart = line_chart(buckets([0, 180_000]), title="t", label=hour_label, label_every=1)
    assert [label for _, label in chart.y_ticks][-2:] == ["160,000", "200,000"]


def test_a_single_bucket_sits_in_the_middle():
    chart = line_chart(buckets([7]), title="t", label=hour_label, label_every=1)
    [(x, _)] = points(chart, "received")
    assert x == (chart.left + chart.right) / 2
