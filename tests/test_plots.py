"""prunekit.plots: matplotlib charts as PNG and SVG, with the conventions the report relies on."""

from __future__ import annotations

import io
import math
import subprocess
import sys
from xml.etree import ElementTree

import pytest

from prunekit import plots


def _line_colors(chart):
    return [line.get_color() for line in chart.figure.axes[0].get_lines() if line.get_label() and
            not line.get_label().startswith("_")]


def test_importing_prunekit_plots_does_not_import_matplotlib():
    code = "import sys, prunekit.plots, prunekit.report; print('matplotlib' in sys.modules, 'jinja2' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


def test_a_chart_is_written_as_valid_png_and_svg(tmp_path):
    from PIL import Image

    chart = plots.line_chart({"loss": [(1, 1.0), (2, 0.5), (3, 0.25)]}, title="t", xlabel="step", size=(400, 300))
    png, svg = chart.write(tmp_path, "loss")
    with Image.open(png) as image:
        image.verify()
    with Image.open(png) as image:
        assert image.size == chart.size == (800, 600) and chart.display_size == (400, 300)  # drawn at 2x
        assert len(image.getcolors(1 << 16)) > 2
    root = ElementTree.parse(svg).getroot()
    assert root.tag == "{http://www.w3.org/2000/svg}svg" and ">t<" in svg.read_text()  # text stays text
    again = plots.line_chart({"loss": [(1, 1.0), (2, 0.5), (3, 0.25)]}, title="t", xlabel="step", size=(400, 300))
    assert again.png() == chart.png() and again.svg() == chart.svg()  # reproducible: no date, stable ids
    assert chart.save(tmp_path / "again.svg").read_bytes() == svg.read_bytes()
    assert plots.data_uri(chart).startswith("data:image/png;base64,iVBOR")
    assert plots.png_bytes(chart) == chart.png() and plots.png_bytes(Image.new("RGB", (2, 2))).startswith(b"\x89PNG")


def test_log_axis_only_where_positive_values_span_decades():
    decades = plots.line_chart({"loss": [(i, 10.0 ** -i) for i in range(5)]})
    narrow = plots.line_chart({"loss": [(i, 1.0 + i / 10) for i in range(5)]})
    negative = plots.line_chart({"loss": [(0, -1.0), (1, 100.0)]})
    assert decades.figure.axes[0].get_yscale() == "log"
    assert narrow.figure.axes[0].get_yscale() == "linear" and negative.figure.axes[0].get_yscale() == "linear"
    assert plots.line_chart({"a": [(0, 1e-4), (1, 1.0)]}, log_y=False).figure.axes[0].get_yscale() == "linear"
    assert plots.spans_decades([0.01, 1.0]) and not plots.spans_decades([0.5, 1.0]) and not plots.spans_decades([0, 10])


def test_noisy_curves_are_smoothed_without_lag_over_the_faint_raw_curve():
    ramp = [float(i) for i in range(100)]
    smoothed = plots.smooth_curve(ramp, 5)
    assert smoothed[2:-2] == pytest.approx(ramp[2:-2])  # centred: a straight line stays where it is
    noisy = [1.0 + (0.5 if i % 2 else -0.5) for i in range(200)]
    window = plots.smoothing_window(len(noisy))
    assert window % 2 == 1 and window >= 3 and plots.smoothing_window(8) == 1
    assert max(abs(v - 1.0) for v in plots.smooth_curve(noisy, window)[window:-window]) < 0.1
    chart = plots.line_chart({"loss": list(enumerate(noisy))}, smooth=True)
    lines = chart.figure.axes[0].get_lines()
    raw = [line for line in lines if line.get_alpha() is not None and line.get_alpha() < 0.5]
    assert len(raw) == 1 and len(lines) == 2 and raw[0].get_color() == lines[1].get_color()
    with pytest.raises(ValueError):
        plots.smooth_curve([1.0], 0)


def test_series_get_distinct_colour_blind_safe_colours_then_line_styles():
    chart = plots.line_chart({f"E{i}": [(0, i + 1.0), (1, i + 2.0)] for i in range(10)})
    colors = _line_colors(chart)
    assert colors[:8] == list(plots.PALETTE) and len(set(colors[:8])) == 8
    styles = [line.get_linestyle() for line in chart.figure.axes[0].get_lines()]
    assert styles[:8] == ["-"] * 8 and styles[8] != "-"  # the 9th series repeats a colour, not a look


def test_error_bars_where_there_is_spread():
    bars = plots.bar_chart(["E0", "E1"], {"mean": [1.0, 2.0]}, errors={"mean": [(0.5, 1.5), None]})
    containers = [c for c in bars.figure.axes[0].containers if type(c).__name__ == "ErrorbarContainer"]
    assert len(containers) == 1
    segments = containers[0].lines[2][0].get_segments()
    assert len(segments) == 1 and [tuple(p) for p in segments[0]][0][1] == pytest.approx(0.5)
    forest = plots.interval_chart({"m": [("teacher", 1.0, 0.8, 1.2), ("mixture", 0.9, None, None)]}, title="ci")
    assert forest.size[0] > 0 and any(type(c).__name__ == "ErrorbarContainer" for c in forest.figure.axes[0].containers)


def test_heatmap_marks_missing_cells_and_grid_is_raster_only():
    import numpy as np
    from PIL import Image

    heat = plots.heatmap([[0.0, 1.0], [0.5, None]], row_labels=["a", "b"], col_labels=["x", "y"],
                         col_groups=[("g", 0, 1)], title="h")
    image = heat.figure.axes[0].get_images()[0]
    data = image.get_array()
    assert bool(data.mask[1, 1]) and not data.mask[0, 0] and math.isclose(float(data[1, 0]), 0.5)
    texts = {t.get_text() for t in heat.figure.axes[0].texts}
    assert {"0", "1", ".50", "g"} <= texts  # values printed, the group labelled
    grid = plots.image_grid([[Image.new("RGB", (8, 8), (255, 0, 0))], [np.zeros((8, 8, 3), dtype=np.uint8)]],
                            row_labels=["E0", "E1"], col_labels=["teacher"])
    assert not grid.vector and heat.vector
    assert Image.open(io.BytesIO(grid.png())).size == grid.size
