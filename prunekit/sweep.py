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
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import datetime as _dt
import itertools
import json
import math
import re
import shlex
import shutil
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prunekit.config import option, validate_options
from prunekit.errors import MissingPathError, PrunekitError, RecipeError, RunDirError
from prunekit.recipe import Recipe

FORMAT = "prunekit-sweep/1"
MACS_COLUMN = "macs_ratio"
Grid = dict[str, list[Any]] | list[dict[str, list[Any]]] | None

# -- the sweep file's schema ---------------------------------------------------------------------


@dataclass
class PointSpec:
    label: str = option(help="names the point's run directory and its line in plots")
    recipe: str | None = option(None, help="recipe file, relative to the sweep file (default: base)")
    overrides: list[str] = option([], help="dotlist overrides, after the sweep's own")
    grid: Grid = option(None, help="replaces the sweep's grid for this point; null = not crossed")


@dataclass
class LauncherSpec:
    mode: Literal["inprocess", "subprocess"] = option(
        "inprocess", help="inprocess: prunekit.runner.execute in this process; subprocess: COMMAND run ...")
    command: list[str] | None = option(
        None, help="how a point is launched, e.g. [torchrun, --nproc_per_node=8, -m, prunekit] "
                   "(default: this Python, -m prunekit)")


@dataclass
class PlotSpec:
    x: str = option(MACS_COLUMN, help="column on the x axis")
    series: list[str] = option([], help="grid axes that split a point's line in several")
    average: list[str] = option(["seed"], help="grid axes averaged over before plotting")


@dataclass
class SweepSpec:
    name: str | None = option(None, help="the sweep directory's name (default: the file's stem)")
    description: str = ""
    output_dir: str = option("runs/sweeps", help="parent of the sweep directory")
    base: str | None = option(None, help="recipe of points that name none, relative to the sweep file")
    overrides: list[str] = option([], help="dotlist overrides applied to every point")
    grid: Grid = option(None, help="{key: [values]} crossed with every point, or a list of such grids")
    points: list[PointSpec] = option([], help="explicit points (each: label, recipe, overrides, grid)")
    metrics: list[Any] = option([], help="columns: dotted metrics.json paths, or {name, path: [paths]}")
    launcher: LauncherSpec = field(default_factory=LauncherSpec)
    plot: PlotSpec = field(default_factory=PlotSpec)


@dataclass
class MetricColumnSpec:
    name: str
    path: str | list[str]


# -- a loaded sweep ------------------------------------------------------------------------------


@dataclass(frozen=True)
class MetricColumn:
    name: str
    paths: tuple[str, ...]


@dataclass
class SweepPoint:
    label: str
    series: str
    recipe_file: Path
    overrides: list[str]
    axes: dict[str, Any]
    run_dir: Path
    recipe: Recipe | None = None

    @property
    def method(self) -> str:
        return str(self.recipe.data["method"]["name"]) if self.recipe else ""


@dataclass
class Sweep:
    name: str
    file: Path
    directory: Path
    points: list[SweepPoint]
    metrics: list[MetricColumn]
    launcher: LauncherSpec
    plot: PlotSpec
    axis_names: dict[str, str]

    def command(self, point: SweepPoint, *, resume: bool = False) -> list[str]:
        """The ``prunekit run`` command line of ``point`` (what a subprocess launch executes)."""
        prefix = list(self.launcher.command or [sys.executable, "-m", "prunekit"])
        tail = ["--resume"] if resume else []
        return [*prefix, "run", _display_path(point.recipe_file), "--output", _display_path(point.run_dir), "-q",
                *point.overrides, *tail]

    def shown_command(self, point: SweepPoint) -> str:
        """The command to record: with the configured launcher, else the ``prunekit`` entry point."""
        prefix = list(self.launcher.command or ["prunekit"])
        return shlex.join([*prefix, "run", _display_path(point.recipe_file), "--output",
                           _display_path(point.run_dir), *point.overrides])


def _display_path(path: Path) -> str:
    """Relative to the working directory when inside it (shorter commands), else absolute."""
    path = Path(path).resolve()
    try:
        return str(path.relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


# -- loading and validation ----------------------------------------------------------------------


def _format_value(value: Any) -> str:
    """A grid value as the right-hand side of a dotlist override (which omegaconf parses as YAML)."""
    import yaml

    if isinstance(value, str):
        try:
            same = yaml.safe_load(value) == value
        except yaml.YAMLError:
            same = False
        return value if same else json.dumps(value)
    if isinstance(value, (list, dict)) or value is None or isinstance(value, bool):
        return json.dumps(value)
    return str(value)


def _expand(grid: Any) -> list[dict[str, Any]]:
    """Every combination of a grid (a mapping of axes) or of a list of grids (their union, in order)."""
    if not grid:
        return [{}]
    grids = grid if isinstance(grid, list) else [grid]
    out: list[dict[str, Any]] = []
    for g in grids:
        keys = [k for k in g if g[k]]  # an axis without values is reported by validation, not expanded
        out.extend(dict(zip(keys, values)) for values in itertools.product(*(g[k] for k in keys)))
    return out


def _axis_names(keys: Sequence[str]) -> dict[str, str]:
    """The shortest dotted suffix of each key that no other key ends with (``budget.target`` -> target)."""
    names = {}
    for key in keys:
        parts = key.split(".")
        for n in range(1, len(parts) + 1):
            suffix = ".".join(parts[-n:])
            if not any(other != key and (other == suffix or other.endswith("." + suffix)) for other in keys):
                break
        names[key] = suffix
    return names


def _dir_name(label: str) -> str:
    return re.sub(r"[^A-Za-z0-9._=,@+-]", "_", label) or "point"


def _grid_problems(grid: Any, where: str) -> list[str]:
    grids = grid if isinstance(grid, list) else [grid] if grid else []
    problems = []
    for i, g in enumerate(grids):
        at = f"{where}[{i}]" if isinstance(grid, list) else where
        if not g:
            problems.append(f"{at}: an empty grid; give at least one axis")
        for key, values in g.items():
            if not values:
                problems.append(f"{at}.{key}: no values")
    return problems


def _metric_columns(raw: list[Any], problems: list[str]) -> list[MetricColumn]:
    columns = []
    for i, item in enumerate(raw):
        if isinstance(item, str):
            columns.append(MetricColumn(item, (item,)))
            continue
        if not isinstance(item, Mapping):
            problems.append(f"metrics[{i}]: expected a dotted path or {{name, path}}, got {item!r}")
            continue
        found = validate_options(MetricColumnSpec, item, f"metrics[{i}]")
        problems.extend(found)
        if not found:
            paths = item["path"] if isinstance(item["path"], list) else [item["path"]]
            if not paths:
                problems.append(f"metrics[{i}].path: give at least one path")
            columns.append(MetricColumn(item["name"], tuple(paths)))
    names = [c.name for c in columns]
    for name in sorted({n for n in names if names.count(n) > 1 or n == MACS_COLUMN}):
        problems.append(f"metrics: column {name!r} is given twice" if name != MACS_COLUMN else
                        f"metrics: {MACS_COLUMN!r} is always a column; name this one differently")
    return columns


def _read_spec(path: Path) -> tuple[dict[str, Any], list[str]]:
    import yaml

    try:
        raw = yaml.safe_load(path.read_text())
    except FileNotFoundError:
        return {}, [f"{path}: sweep file not found"]
    except yaml.YAMLError as exc:
        return {}, [f"{path}: cannot parse YAML: {' '.join(str(exc).split())}"]
    if not isinstance(raw, dict):
        return {}, [f"{path}: a sweep file must be a mapping at the top level"]
    return raw, []


def _usable(schema: type, data: Mapping[str, Any]) -> dict[str, Any]:
    """The part of ``data`` that fits ``schema`` (known keys, right types), so that validation can go
    on past the first problems and report the rest too."""
    import typing

    from prunekit.config import check_value

    hints = typing.get_type_hints(schema)
    out: dict[str, Any] = {}
    for key, value in data.items():
        tp = hints.get(key)
        if tp is None:
            continue
        if dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
            out[key] = _usable(tp, value)
        elif key == "points" and isinstance(value, list):
            out[key] = [_usable(PointSpec, item) for item in value
                        if isinstance(item, Mapping) and isinstance(item.get("label"), str)]
        elif not check_value(value, tp, key):
            out[key] = value
    return out


def _by_labels(items: Sequence[tuple[str, str]]) -> list[str]:
    """(label, message) pairs as one line per message naming every point it concerns."""
    by_message: dict[str, list[str]] = {}
    for label, message in items:
        by_message.setdefault(message, [])
        if label not in by_message[message]:
            by_message[message].append(label)
    lines = []
    for message, labels in by_message.items():
        shown = ", ".join(labels[:3]) + (f" and {len(labels) - 3} more" if len(labels) > 3 else "")
        lines.append(f"point{'s' if len(labels) > 1 else ''} {shown}: {message}")
    return lines


def load_sweep(path: str | Path, *, output: str | Path | None = None, overrides: Sequence[str] = (),
               registry: Any = None) -> Sweep:
    """Read and validate a sweep file and every point's recipe; raise :class:`RecipeError` listing
    every problem at once. ``overrides`` (e.g. from the command line) apply to every point, last.
    Imports no torch."""
    from prunekit.config import instantiate_schema
    from prunekit.recipe import load_recipe
    from prunekit.registry import get_registry

    path = Path(path)
    raw, problems = _read_spec(path)
    if problems:
        raise RecipeError(problems)
    problems = validate_options(SweepSpec, raw, "")
    usable = _usable(SweepSpec, raw)
    problems += _grid_problems(usable.get("grid"), "grid")
    for i, point in enumerate(usable.get("points") or []):
        if "grid" in point:
            problems += _grid_problems(point["grid"], f"points[{i}].grid")
    spec: SweepSpec = instantiate_schema(SweepSpec, usable)
    name = spec.name or path.stem
    directory = Path(output) if output is not None else Path(spec.output_dir) / name
    columns = _metric_columns(list(usable.get("metrics") or []), problems)
    raw_points = list(usable.get("points") or [])
    if not raw_points:
        if spec.base is None and not raw.get("points"):
            problems.append("give points, or a base recipe (crossed with grid)")
        raw_points = [{"label": "" if spec.grid else name}] if spec.base is not None else []

    axis_keys: list[str] = []
    expanded: list[tuple[dict[str, Any], dict[str, Any], str | None]] = []
    for i, point in enumerate(raw_points):
        recipe = point.get("recipe") or spec.base
        if recipe is None:
            problems.append(f"points[{i}] ({point['label']}): no recipe, and the sweep has no base")
        grid = point["grid"] if "grid" in point else spec.grid
        for combo in _expand(grid):
            axis_keys.extend(k for k in combo if k not in axis_keys)
            expanded.append((point, combo, recipe))
    names = _axis_names(axis_keys)
    # The default average (seed) is fine without a seed axis; axes named explicitly must exist.
    explicit = [*spec.plot.series, *((usable.get("plot") or {}).get("average") or [])]
    for key in explicit:
        if key not in axis_keys and key not in names.values():
            problems.append(f"plot: {key!r} is not a grid axis (axes: {', '.join(axis_keys) or 'none'})")
    if spec.plot.x != MACS_COLUMN and spec.plot.x not in [c.name for c in columns]:
        problems.append(f"plot.x: {spec.plot.x!r} is not a column ({', '.join([MACS_COLUMN, *[c.name for c in columns]])})")

    points: list[SweepPoint] = []
    for point, combo, recipe in expanded:
        assigned = ",".join(f"{names[k]}={combo[k]}" for k in combo)
        label = "@".join(x for x in (point["label"], assigned) if x)
        split = [f"{names[k]}={combo[k]}" for k in combo if k in spec.plot.series or names[k] in spec.plot.series]
        series = "@".join(x for x in (point["label"] or name, ",".join(split)) if x)
        point_overrides = [*spec.overrides, *point.get("overrides", []),
                           *(f"{k}={_format_value(v)}" for k, v in combo.items()), *overrides]
        recipe_file = (path.parent / recipe).resolve() if recipe else path
        points.append(SweepPoint(label, series, recipe_file, point_overrides, dict(combo),
                                 directory / "runs" / _dir_name(label)))
    labels = [p.label for p in points]
    dirs: dict[str, list[str]] = {}
    for p in points:
        dirs.setdefault(p.run_dir.name, []).append(p.label)
    for label in dict.fromkeys(lb for lb in labels if labels.count(lb) > 1):
        problems.append(f"points: the label {label!r} is used by {labels.count(label)} points; labels must be unique")
    for folder, owners in dirs.items():
        if len(set(owners)) > 1:
            problems.append(f"points: {', '.join(map(repr, dict.fromkeys(owners)))} would share the run directory "
                            f"{folder!r}; give them labels that differ in letters, digits or ._=,@+-")

    registry = registry or get_registry()
    recipe_problems: list[tuple[str, str]] = []
    for p in points:
        label = p.label or name
        if not p.recipe_file.is_file():
            recipe_problems.append((label, f"recipe {p.recipe_file} not found"))
            continue
        try:
            p.recipe = load_recipe(p.recipe_file, p.overrides, registry=registry)
        except RecipeError as exc:
            recipe_problems.extend((label, line) for line in exc.problems)
    problems = list(dict.fromkeys(problems)) + _by_labels(recipe_problems)
    if problems:
        raise RecipeError([f"{path}: {p}" for p in problems])
    return Sweep(name, path, directory, points, columns, spec.launcher, spec.plot, names)


def preflight_points(sweep: Sweep, registry: Any) -> list[str]:
    """Machine-specific problems (missing model or data paths) of every point, each message once."""
    from prunekit.runner import preflight

    return _by_labels([(p.label or sweep.name, message) for p in sweep.points
                       for message in preflight(p.recipe, registry)])  # type: ignore[arg-type]


# -- metrics.json lookups ------------------------------------------------------------------------


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def lookup(metrics: Any, path: str) -> Any:
    """The value at a dotted ``path`` of ``metrics`` (None when absent). ``*`` over a list is the
    mean of the rest of the path over its items, weighted by their ``share`` when they have one."""
    node = metrics
    parts = path.split(".")
    for i, part in enumerate(parts):
        if part == "*" and isinstance(node, list):
            rest = ".".join(parts[i + 1:])
            pairs = []
            for item in node:
                value = _number(lookup(item, rest) if rest else item)
                weight = _number(item.get("share")) if isinstance(item, Mapping) and "share" in item else 1.0
                if value is not None and weight is not None:
                    pairs.append((value, weight))
            total = sum(w for _, w in pairs)
            return sum(v * w for v, w in pairs) / total if pairs and total > 0 else None
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, list) and re.fullmatch(r"-?\d+", part) and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return None
        if node is None:
            return None
    return node


def column_value(metrics: Mapping[str, Any] | None, column: MetricColumn) -> Any:
    if metrics is None:
        return None
    for path in column.paths:
        value = lookup(metrics, path)
        if value is not None:
            return value
    return None


def macs_ratio(metrics: Mapping[str, Any] | None) -> float | None:
    """Share-weighted MACs ratio of a run's experts; 1.0 for a run that reports none (unpruned)."""
    if metrics is None:
        return None
    if not metrics.get("experts"):
        return 1.0
    return _number(lookup(metrics, "experts.*.macs_ratio"))


# -- running -------------------------------------------------------------------------------------


def _point_state(point: SweepPoint) -> str:
    """new, completed, started (resumable) or stale (created but nothing recorded)."""
    d = point.run_dir
    if not d.is_dir() or not any(d.iterdir()):
        return "new"
    if _run_status(d).get("status") == "completed":
        return "completed"
    if (d / "recipe.yaml").is_file():
        return "started"
    return "stale"


def _run_status(run_dir: Path) -> dict[str, Any]:
    """``run_dir``'s run.json ({} when there is none, or none readable)."""
    try:
        info = json.loads((run_dir / "run.json").read_text())
    except (OSError, ValueError):
        return {}
    return info if isinstance(info, dict) else {}


def _not_completed(run_dir: Path) -> str | None:
    """Why ``run_dir`` does not hold a completed run (None when it does): a point is completed only
    when its run directory says so, whatever its launcher's exit status."""
    if not (run_dir / "run.json").is_file():
        return f"the launch ended without an error but left no run in {_display_path(run_dir)} (no run.json)"
    info = _run_status(run_dir)
    if info.get("status") == "completed":
        return None
    said = f"status {info['status']!r}" if info.get("status") else "no readable status"
    error = f": {_one_line(info['error'])}" if info.get("error") else ""
    return f"the launch ended without an error but {_display_path(run_dir / 'run.json')} says {said}{error}"


def _clear_stale(run_dir: Path) -> bool:
    """A run killed before it wrote recipe.yaml left only its log and empty folders: start afresh."""
    from prunekit.run import LOCK_FILE

    entries = list(run_dir.iterdir())
    empty_dirs = all(not any(e.iterdir()) for e in entries if e.is_dir())
    if {e.name for e in entries} <= {"run.log", "run.json", LOCK_FILE, "checkpoints", "artifacts"} and empty_dirs:
        shutil.rmtree(run_dir)
        return True
    return False


def _error_line(exc: BaseException) -> str:
    if isinstance(exc, RecipeError):
        text = "; ".join(exc.problems)
    elif isinstance(exc, PrunekitError):
        text = str(exc)
    else:
        text = f"{type(exc).__name__}: {exc}"
    return _one_line(text) or type(exc).__name__


def _one_line(text: str, limit: int = 400) -> str:
    """A message on one line (tables and logs), shortened to ``limit`` characters."""
    flat = " ".join(str(text).split())
    return flat if len(flat) <= limit else flat[: limit - 3] + "..."


def _run_inprocess(point: SweepPoint, resume: bool, registry: Any) -> str | None:
    from prunekit.runner import execute

    try:
        execute(point.recipe, registry, output=point.run_dir, resume=resume, console_log=False)  # type: ignore[arg-type]
    except Exception as exc:  # a failed point is recorded; the sweep goes on
        return _error_line(exc)
    return None


def _run_subprocess(sweep: Sweep, point: SweepPoint, resume: bool) -> str | None:
    import subprocess

    log = sweep.directory / "logs" / f"{point.run_dir.name}.log"
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as handle:
        handle.write(f"$ {shlex.join(sweep.command(point, resume=resume))}\n")
        handle.flush()
        code = subprocess.call(sweep.command(point, resume=resume), stdout=handle, stderr=subprocess.STDOUT)
    if code == 0:
        return None  # completed only if the run directory says so (_run_point checks)
    error = _run_status(point.run_dir).get("error")
    if error:
        return _one_line(error)
    lines = [line.strip() for line in log.read_text().splitlines() if line.strip()]
    return _one_line(lines[-1]) if lines else f"exit status {code}"


def _now() -> str:
    return _dt.datetime.now().isoformat(timespec="seconds")


def _write_state(sweep: Sweep, records: list[dict[str, Any]]) -> None:
    from prunekit.run import atomic_write_json

    atomic_write_json(sweep.directory / "sweep.json", {
        "format": FORMAT, "name": sweep.name, "sweep_file": str(sweep.file.resolve()), "updated": _now(),
        "points": records,
    })


def _say(text: str) -> None:
    print(text, file=sys.stderr, flush=True)


def run_sweep(path: str | Path, *, output: str | Path | None = None, resume: bool = True,
              overrides: Sequence[str] = ()) -> Path:
    """Validate the sweep, run its points one after the other, write the comparison; returns the
    sweep directory. ``resume=False`` refuses a sweep directory that already holds points;
    ``overrides`` apply to every point (give the same ones when continuing a sweep)."""
    from prunekit.registry import get_registry

    registry = get_registry()
    sweep = load_sweep(path, output=output, overrides=overrides, registry=registry)
    problems = preflight_points(sweep, registry)
    if problems:
        raise MissingPathError("\n".join(problems))
    directory = sweep.directory
    if directory.exists() and not directory.is_dir():
        raise RunDirError(f"sweep directory {directory} exists and is not a directory")
    if not resume and directory.is_dir() and any(directory.iterdir()):
        raise RunDirError(f"sweep directory {directory} already exists; run again without --no-resume to "
                          "continue it, or choose another with --output")
    directory.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sweep.file, directory / "sweep.yaml")
    (directory / "commands.sh").write_text(
        "#!/bin/sh\n# Every point of this sweep as an ordinary run (any of them may run on its own).\n"
        + "".join(f"{sweep.shown_command(p)}\n" for p in sweep.points))

    earlier = _earlier_records(directory)
    records = [_record(sweep, p, earlier.get(p.label, {})) for p in sweep.points]
    _write_state(sweep, records)
    total = len(sweep.points)
    try:
        for i, (point, record) in enumerate(zip(sweep.points, records), start=1):
            _run_point(sweep, point, record, f"[{i}/{total}]", registry, lambda: _write_state(sweep, records))
            _write_state(sweep, records)
    except KeyboardInterrupt:
        for record in records:
            if record["status"] == "running":
                record["status"] = "interrupted"
        _write_state(sweep, records)
        write_results(sweep, records)
        raise
    write_results(sweep, records)
    failed = [r for r in records if r["status"] != "completed"]
    _say(f"sweep {sweep.name}: {total - len(failed)} of {total} points completed; table: "
         f"{_display_path(directory / 'results.md')}")
    for r in failed:
        _say(f"  failed: {r['label']}: {r['error']}")
    return directory


def _earlier_records(directory: Path) -> dict[str, dict[str, Any]]:
    state = directory / "sweep.json"
    if not state.is_file():
        return {}
    return {r["label"]: r for r in json.loads(state.read_text()).get("points", [])}


def _record(sweep: Sweep, point: SweepPoint, earlier: Mapping[str, Any]) -> dict[str, Any]:
    return {
        "label": point.label, "series": point.series, "method": point.method, "axes": point.axes,
        "recipe": str(point.recipe_file), "overrides": point.overrides,
        "run_dir": str(point.run_dir.relative_to(sweep.directory)),
        "command": sweep.shown_command(point), "status": "pending", "error": None,
        "seconds": earlier.get("seconds"), "reused": False,
    }


def _run_point(sweep: Sweep, point: SweepPoint, record: dict[str, Any], counter: str, registry: Any,
               save: Callable[[], None]) -> None:
    from prunekit.run import check_run_dir, refuse_if_locked

    label = point.label or sweep.name
    try:  # another process is writing there (the same sweep run twice at once): not this one's to run
        refuse_if_locked(point.run_dir)
    except RunDirError as exc:
        record.update(status="failed", error=str(exc))
        _say(f"{counter} {label}: failed: {exc}")
        return
    state = _point_state(point)
    if state == "stale" and not _clear_stale(point.run_dir):
        record.update(status="failed", error=f"{point.run_dir} exists but holds no recipe.yaml; remove it")
        _say(f"{counter} {label}: failed: {record['error']}")
        return
    if state in ("completed", "started"):
        try:  # a directory left by a different recipe is never reused or resumed
            check_run_dir(point.run_dir, point.recipe, resume=True)  # type: ignore[arg-type]
        except RunDirError as exc:
            record.update(status="failed", error=str(exc))
            _say(f"{counter} {label}: failed: {exc}")
            return
    if state == "completed":
        record.update(status="completed", reused=True)
        _say(f"{counter} {label}: already completed, skipped")
        return
    resume = state == "started"
    _say(f"{counter} {label}: {'resuming' if resume else 'running'}: {record['command']}")
    record.update(status="running", error=None)
    save()
    start = time.perf_counter()
    if sweep.launcher.mode == "subprocess":
        error = _run_subprocess(sweep, point, resume)
    else:
        error = _run_inprocess(point, resume, registry)
    record["seconds"] = round(time.perf_counter() - start, 2)
    if error is None:
        error = _not_completed(point.run_dir)
    if error is None:
        record.update(status="completed")
        _say(f"{counter} {label}: completed in {record['seconds']:.1f} s")
    else:
        record.update(status="failed", error=error)
        _say(f"{counter} {label}: failed: {error}")


# -- the comparison ------------------------------------------------------------------------------


def result_rows(sweep: Sweep, records: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per point: identity, grid axes, the MACs ratio and every metric column."""
    rows = []
    for point, record in zip(sweep.points, records):
        metrics_file = point.run_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if record["status"] == "completed" and metrics_file.is_file() else None
        row: dict[str, Any] = {"label": point.label or sweep.name, "series": point.series, "method": point.method,
                               "status": record["status"]}
        for key, name in sweep.axis_names.items():
            row[name] = point.axes.get(key)
        row[MACS_COLUMN] = macs_ratio(metrics)
        for column in sweep.metrics:
            row[column.name] = column_value(metrics, column)
        row["seconds"] = record.get("seconds")
        row["run_dir"] = record["run_dir"]
        row["error"] = record.get("error") or ""
        rows.append(row)
    return rows


def _cell(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        return f"{value:.4g}" if math.isfinite(value) else str(value)
    if isinstance(value, (dict, list)):
        return json.dumps(value)
    return str(value).replace("|", "\\|").replace("\n", " ")


def write_results(sweep: Sweep, records: Sequence[Mapping[str, Any]]) -> list[Path]:
    """results.csv, results.md and plots/*.png in the sweep directory; returns the paths written."""
    rows = result_rows(sweep, records)
    columns = list(rows[0]) if rows else []
    written = []
    csv_path = sweep.directory / "results.csv"
    with open(csv_path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({k: json.dumps(v) if isinstance(v, (dict, list)) else v for k, v in row.items()})
    written.append(csv_path)
    lines = [f"# Sweep {sweep.name}", "", f"Sweep file: `{_display_path(sweep.file)}`; {len(rows)} points, "
             f"{sum(r['status'] == 'completed' for r in rows)} completed. `{MACS_COLUMN}`: MACs of the pruned "
             "U-Net over the dense one (share-weighted over experts).", ""]
    lines.append("| " + " | ".join(columns) + " |")
    lines.append("|" + "|".join("---" for _ in columns) + "|")
    for row in rows:
        lines.append("| " + " | ".join(_cell(row[c]) for c in columns) + " |")
    plots = write_plots(sweep, rows)
    if plots:
        lines += ["", *[f"![{p.stem}](plots/{p.name})" for p in plots]]
    md_path = sweep.directory / "results.md"
    md_path.write_text("\n".join(lines) + "\n")
    written.append(md_path)
    return written + plots


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

    x = sweep.plot.x
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


# -- command line --------------------------------------------------------------------------------


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The arguments of ``prunekit sweep`` (added to its sub-parser)."""
    parser.add_argument("sweep", help="sweep YAML file")
    parser.add_argument("overrides", nargs="*", help="dotlist overrides for every point, e.g. model.path=/models/sd21")
    parser.add_argument("--output", "-o", help="sweep directory (default: OUTPUT_DIR/NAME from the sweep file)")
    parser.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                        help="skip completed points and resume interrupted ones (default); "
                             "--no-resume refuses an existing sweep directory")
    parser.add_argument("--dry-run", action="store_true",
                        help="validate the sweep and every point's recipe, print the commands, run nothing")


def main(args: argparse.Namespace) -> int:
    """``prunekit sweep``: 0 when every point completed, 1 when some failed; invalid sweep files
    raise :class:`RecipeError` (exit 2)."""
    if args.dry_run:
        sweep = load_sweep(args.sweep, output=args.output, overrides=args.overrides)
        for point in sweep.points:
            print(f"{point.label or sweep.name}\t{sweep.shown_command(point)}")
        _say(f"{args.sweep}: valid ({len(sweep.points)} points, sweep directory {sweep.directory})")
        return 0
    directory = run_sweep(args.sweep, output=args.output, resume=args.resume, overrides=args.overrides)
    state = json.loads((directory / "sweep.json").read_text())
    return 0 if all(p["status"] == "completed" for p in state["points"]) else 1


def _standalone(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m prunekit.sweep", description=__doc__.splitlines()[0])
    add_arguments(parser)
    args = parser.parse_args(argv)
    try:
        return main(args)
    except PrunekitError as exc:
        for line in exc.problems if isinstance(exc, RecipeError) else str(exc).splitlines():
            print(f"error: {line}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        print("interrupted; run the same sweep again to continue it", file=sys.stderr)
        return 130


if __name__ == "__main__":
    raise SystemExit(_standalone())
