"""``prunekit sweep SWEEP.yaml``: run many recipes as ordinary runs and compare them side by side.

A sweep file names recipes and overrides; every combination is a *point*, run as an ordinary
``prunekit run`` in its own run directory. Example::

    name: tiny_methods
    output_dir: runs/sweeps             # the sweep directory is OUTPUT_DIR/NAME (or --output)
    overrides: [dataset.size=64]        # applied to every point first
    grid: {budget.target: [0.6, 0.8]}   # crossed with every point (a list of grids = their union)
    points:                             # without points, one point: base (below) crossed with grid
      - {label: aptp, recipe: ../tiny/aptp_smoke.yaml, overrides: [method.finetune.iters=3]}
      - {label: norm, recipe: ../tiny/norm.yaml}
      - {label: dense, recipe: ../tiny/dense_finetune.yaml, grid: null}   # not crossed: one run
    base: ../tiny/aptp_smoke.yaml       # the recipe of points that name none
    metrics:                            # metrics.json entries that become table columns
      - experts.0.macs_ratio            # a dotted path (list indices are numbers)
      - {name: loss, path: [experts.*.final_loss, finetune.loss_last]}   # first path present wins
    launcher: {mode: inprocess}         # or subprocess, command: [torchrun, --nproc_per_node=8, -m, prunekit]
    plot: {x: macs_ratio, series: [], average: [seed]}

Recipe paths are relative to the sweep file. ``experts.*.FIELD`` is the share-weighted mean of FIELD
over a run's experts; the ``macs_ratio`` column is always there: ``experts.*.macs_ratio``, or 1.0 for a
run that reports no experts (an unpruned model).

The whole sweep is validated before any point runs (unknown keys with did-you-mean, every point's
recipe, then every point's machine paths); all problems are reported at once. Points run one after
the other; a completed point (``run.json`` status completed, same recipe) is skipped, an interrupted
one is resumed in its run directory, a failed one is recorded with its error line and the others go
on. A point is completed only when its run directory's ``run.json`` says so: a launcher that exits 0
without leaving a completed run there makes a failed point, with that as its error. A point whose run
directory another process holds (``run.lock``) is recorded failed, not run alongside it. The sweep
directory holds::

    sweep.yaml        the sweep file as given        commands.sh   every point as a prunekit command
    sweep.json        points: label, command, status, error, seconds, run directory
    runs/LABEL/       each point's run directory     results.md / results.csv   the comparison table
    plots/METRIC.png  METRIC against MACs ratio, one line per series (a point label)

The package, by responsibility: :mod:`~prunekit.sweep.schema` (the sweep file's format and
validation), :mod:`~prunekit.sweep.state` (a point's state from its run directory, ``sweep.json``),
:mod:`~prunekit.sweep.launch` (running the points), :mod:`~prunekit.sweep.lookup` (``metrics.json``
values), :mod:`~prunekit.sweep.tables` and :mod:`~prunekit.sweep.plots` (the comparison); the command
line is :mod:`prunekit.commands.sweep` (also ``python -m prunekit.sweep``).
"""

from __future__ import annotations

from prunekit.commands.sweep import add_arguments, main
from prunekit.sweep.launch import run_sweep
from prunekit.sweep.lookup import column_value, lookup, macs_ratio
from prunekit.sweep.plots import plot_series, write_plots
from prunekit.sweep.schema import (
    FORMAT,
    MACS_COLUMN,
    Grid,
    LauncherSpec,
    MetricColumn,
    MetricColumnSpec,
    PlotSpec,
    PointSpec,
    Sweep,
    SweepPoint,
    SweepSpec,
    load_sweep,
    preflight_points,
)
from prunekit.sweep.tables import result_rows, write_results

__all__ = [
    "FORMAT", "MACS_COLUMN", "Grid", "LauncherSpec", "MetricColumn", "MetricColumnSpec", "PlotSpec", "PointSpec",
    "Sweep", "SweepPoint", "SweepSpec", "add_arguments", "column_value", "load_sweep", "lookup", "macs_ratio",
    "main", "plot_series", "preflight_points", "result_rows", "run_sweep", "write_plots", "write_results",
]
