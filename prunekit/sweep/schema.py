"""The sweep file's format and its validation: :func:`load_sweep` reads a sweep file, checks it and every
point's recipe, and returns a :class:`Sweep` (its points, columns, launcher and plot). Imports no torch.

The format itself is described in :mod:`prunekit.sweep`.
"""

from __future__ import annotations

import dataclasses
import itertools
import json
import re
import shlex
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from prunekit.config import option, validate_options
from prunekit.errors import RecipeError
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
    jobs: int = option(
        1, help="points run at once, each as its own COMMAND process (jobs > 1 implies subprocess); "
                "give each its share of the machine, e.g. engine.threads, or CUDA_VISIBLE_DEVICES in COMMAND")


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
        if isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(value, Mapping):
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
    if spec.launcher.jobs < 1:
        problems.append(f"launcher.jobs: {spec.launcher.jobs} must be at least 1")
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
    x_choices = [MACS_COLUMN, *[c.name for c in columns], *names.values()]
    if spec.plot.x not in x_choices and spec.plot.x not in axis_keys:
        problems.append(f"plot.x: {spec.plot.x!r} is neither a column nor a grid axis ({', '.join(x_choices)})")

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
