"""The server-drawn SVG plots (service/svg_plot.py): round ticks, points placed inside the
axes, escaped text, and a note when there is nothing to draw."""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET

import pytest

from service.svg_plot import HEIGHT, LEFT, RIGHT, TOP, WIDTH, Series, nice_ticks, plot_svg

NS = "{http://www.w3.org/2000/svg}"


@pytest.mark.parametrize(
    ("low", "high", "expected"),
    [
        (0.0, 1.0, [0.0, 0.2, 0.4, 0.6, 0.8, 1.0]),
        (0.093, 0.177, [0.1, 0.12, 0.14, 0.16]),
        (-3.0, 47.0, [0.0, 10.0, 20.0, 30.0, 40.0]),
        (2.0, 2.0, [2.0]),
    ],
)
def test_nice_ticks_are_round_and_inside_the_range(low: float, high: float, expected: list[float]) -> None:
    assert nice_ticks(low, high) == pytest.approx(expected)


def test_points_fall_inside_the_axes_and_keep_their_order() -> None:
    xs, ys = [0.1, 0.12, 0.15, 0.17], [0.5, 0.8, 0.9, 0.99]
    svg = plot_svg(
        [Series("front", xs, ys, "#0072B2", "circle", 5), Series("empty", [], [], "#999", "x")],
        title="quality <against> latency",
        x_label="latency (ms)",
        y_label="quality",
        x_lines=[0.16],
        line_colour="#D55E00",
    )
    root = ET.fromstring(str(svg))  # well-formed XML, the title escaped
    assert root.get("aria-label") == "quality <against> latency"
    circles = root.findall(f"{NS}g[@data-series='front']/{NS}circle")
    cx = [float(c.get("cx", "nan")) for c in circles]
    cy = [float(c.get("cy", "nan")) for c in circles]
    assert len(circles) == 4
    assert all(LEFT <= x <= WIDTH - RIGHT for x in cx) and all(TOP <= y <= HEIGHT for y in cy)
    assert cx == sorted(cx) and cy == sorted(cy, reverse=True)  # higher quality is drawn higher
    # The constraint line sits between the points at 0.15 and 0.17 ms.
    limit = [ln for ln in root.iter(f"{NS}line") if ln.get("stroke-dasharray")]
    assert len(limit) == 1 and cx[2] < float(limit[0].get("x1", "nan")) < cx[3]
    assert "empty" not in re.findall(r">([^<>]+)</text>", str(svg))  # no legend entry without points


def test_nothing_to_draw_shows_the_note() -> None:
    empty = [Series("front", [], [], "#000")]
    labels = {"title": "t", "x_label": "x", "y_label": "y", "line_colour": "#000"}
    svg = str(plot_svg(empty, **labels, empty_note="no trial yet"))
    ET.fromstring(svg)
    assert "no trial yet" in svg and "<circle" not in svg


def test_the_reference_is_a_star_with_a_legend_entry() -> None:
    svg = plot_svg(
        [
            Series("front", [0.1, 0.12], [0.8, 0.9], "#0072B2"),
            Series("reference (uncompressed)", [0.15], [0.99], "#000000", "star", 4),
        ],
        title="t",
        x_label="x",
        y_label="y",
        line_colour="#D55E00",
    )
    root = ET.fromstring(str(svg))
    stars = root.findall(f"{NS}g[@data-series='reference (uncompressed)']/{NS}polygon")
    assert len(stars) == 1
    corners = [tuple(map(float, c.split(","))) for c in (stars[0].get("points") or "").split()]
    assert len(corners) == 10  # five points, five inner corners
    xs = [x for x, _ in corners]
    front_cx = [float(c.get("cx", "nan")) for c in root.findall(f"{NS}g[@data-series='front']/{NS}circle")]
    assert min(xs) > max(front_cx)  # at 0.15 ms, right of the front's points
    assert "reference (uncompressed)" in re.findall(r">([^<>]+)</text>", str(svg))  # in the legend
