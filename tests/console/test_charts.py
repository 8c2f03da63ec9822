"""The figures and the status grid, from plain data (no database)."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta

from console.charts import fleet_traffic, status_matrix
from fleet.charts import (
    break_gaps,
    chart_step,
    downsample,
    figure_json,
    requests_figure,
    time_series_figure,
)

T0 = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def test_the_grid_pivots_counts_and_orders_classes_by_size():
    matrix = status_matrix(
        [
            ("us-east", "accelerator", "online", 1),
            ("eu-west", "standard", "offline", 2),
            ("eu-west", "nano", "online", 3),
            ("eu-west", "nano", "degraded", 1),
        ]
    )

    assert [(row.region, row.node_class) for row in matrix.rows] == [
        ("eu-west", "nano"),
        ("eu-west", "standard"),
        ("us-east", "accelerator"),
    ]
    assert [cell.count for cell in matrix.rows[0].cells] == [3, 1, 0, 0]
    assert matrix.rows[0].total == 4
    assert [cell.count for cell in matrix.totals] == [4, 1, 2, 0]
    assert matrix.total == 7
    assert [cell.badge for cell in matrix.totals] == ["success", "warning", "danger", "secondary"]


def test_an_empty_fleet_has_an_empty_grid():
    matrix = status_matrix([])

    assert matrix.rows == [] and matrix.total == 0


def test_gaps_longer_than_the_limit_are_broken():
    points = [(T0, 1.0), (T0 + timedelta(seconds=5), 2.0), (T0 + timedelta(seconds=65), 3.0)]

    result = break_gaps(points, timedelta(seconds=15))

    assert result == [
        (T0, 1.0),
        (T0 + timedelta(seconds=5), 2.0),
        (T0 + timedelta(seconds=35), None),
        (T0 + timedelta(seconds=65), 3.0),
    ]


def test_figures_are_safe_inside_a_script_element():
    fig = time_series_figure({"</script><script>alert(1)</script>": [(T0, 1.0)]}, y_title="x")

    text = str(figure_json(fig))

    assert "</script>" not in text and "<" not in text
    assert json.loads(text)["data"][0]["name"] == "</script><script>alert(1)</script>"


def test_times_are_drawn_in_utc():
    fig = time_series_figure({"cpu": [(T0.astimezone(UTC), 0.5)]}, y_title="load")

    assert json.loads(fig.to_json())["data"][0]["x"] == ["2025-03-01T12:00:00"]


def test_one_region_draws_one_line():
    series = [(T0, 5.0)]

    one = requests_figure(series, {"eu-west": series}, total_name="All regions")
    two = requests_figure(series, {"eu-west": series, "us-east": series}, total_name="All regions")

    assert [trace.name for trace in one.data] == ["All regions"]
    assert [trace.name for trace in two.data] == ["All regions", "eu-west", "us-east"]
    assert two.data[0].line.width > two.data[1].line.width


def test_fleet_traffic_adds_up_regions():
    samples = [
        (1, "eu-west", T0, 0),
        (1, "eu-west", T0 + timedelta(minutes=1), 60),
        (2, "us-east", T0, 0),
        (2, "us-east", T0 + timedelta(minutes=1), 30),
    ]

    traffic = fleet_traffic(samples, T0, T0 + timedelta(minutes=1))

    assert traffic.requests == 90
    assert {trace.name: list(trace.y) for trace in traffic.figure.data} == {
        "All regions": [90.0],
        "eu-west": [60.0],
        "us-east": [30.0],
    }


def test_fleet_traffic_without_samples_says_so():
    traffic = fleet_traffic([], T0, T0 + timedelta(hours=1))

    assert traffic.requests == 0
    assert traffic.figure.layout.annotations[0].text == "No node reported in this hour"


def test_short_ranges_are_drawn_at_every_heartbeat_and_long_ones_coarser():
    heartbeat = timedelta(seconds=5)

    assert chart_step(timedelta(hours=1), heartbeat) == heartbeat
    assert chart_step(timedelta(hours=6), heartbeat) == timedelta(seconds=30)
    assert chart_step(timedelta(hours=24), heartbeat) == timedelta(minutes=2)


def test_downsampling_averages_each_bucket_and_keeps_empty_values_empty():
    points = [
        (T0 + timedelta(seconds=5), 1.0),
        (T0 + timedelta(seconds=25), 3.0),
        (T0 + timedelta(seconds=35), None),
        (T0 + timedelta(seconds=95), 4.0),
    ]

    assert downsample(points, timedelta(seconds=30)) == [
        (T0, 2.0),
        (T0 + timedelta(seconds=30), None),
        (T0 + timedelta(seconds=90), 4.0),
    ]


def test_downsampling_nothing_gives_nothing():
    assert downsample([], timedelta(seconds=30)) == []
