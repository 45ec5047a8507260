"""The sweep's figures: ``plots/METRIC.png``, METRIC against the plot's x column (MACs ratio by default),
one line per series; drawn with :func:`prunekit.plots.line_chart`."""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prunekit.sweep.lookup import _number
from prunekit.sweep.schema import MACS_COLUMN, Sweep, _dir_name


def plot_series(rows: Sequence[Mapping[str, Any]], x: str, y: str, *, axes: Sequence[str] = (),
                average: Sequence[str] = ()) -> dict[str, list[tuple[float, float]]]:
    """(x, y) points per series from completed rows; rows that differ only in the ``average`` axes
    (seeds) become one point, their mean."""
    groups: dict[tuple[str, str], list[tuple[float, float]]] = {}
    for row in rows:
        xv, yv = _number(row.get(x)), _number(row.get(y))
        if row["status"] != "completed" or xv is None or yv is None or not math.isfinite(yv):
            continue
        identity = json.dumps([[a, row.get(a)] for a in axes if a not in average], default=str)
        groups.setdefault((row["series"], identity), []).append((xv, yv))
    series: dict[str, list[tuple[float, float]]] = {}
    for (name, _), pts in groups.items():
        series.setdefault(name, []).append((sum(p[0] for p in pts) / len(pts), sum(p[1] for p in pts) / len(pts)))
    return {name: sorted(pts) for name, pts in series.items()}


def write_plots(sweep: Sweep, rows: Sequence[Mapping[str, Any]]) -> list[Path]:
    from prunekit.plots import line_chart

    x = sweep.axis_names.get(sweep.plot.x, sweep.plot.x)
    average = [sweep.axis_names.get(a, a) for a in sweep.plot.average]
    targets = [MACS_COLUMN, *[c.name for c in sweep.metrics]]
    paths = []
    for y in targets:
        if y == x:
            continue
        series = plot_series(rows, x, y, axes=list(sweep.axis_names.values()), average=average)
        if not series:
            continue
        folder = sweep.directory / "plots"
        folder.mkdir(exist_ok=True)
        path = folder / f"{_dir_name(y)}.png"
        line_chart(series, title=f"{sweep.name}: {y}", xlabel=x, ylabel=y).save(path)
        paths.append(path)
    return paths
