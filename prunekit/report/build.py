"""Build ``report.html`` (and ``report/*.png`` + ``*.svg``, ``report/report.json``) from a run directory
alone, with a progress bar on the shared console."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from prunekit import run_files
from prunekit.report.charts import chart_builders
from prunekit.report.data import collect
from prunekit.report.page import Picture, render_html
from prunekit.report.sections import plugin_sections

REPORT_FILE = "report.html"
REPORT_DIR = "report"


class _Steps:
    """The report's progress: ``step(what)`` names the step about to run (advancing past the previous
    one), ``add(n)`` grows the total once the charts are known."""

    def __init__(self, bar: Any = None, task: Any = None) -> None:
        self.bar, self.task, self.started = bar, task, False

    def step(self, what: str) -> None:
        if self.bar is not None:
            self.bar.update(self.task, advance=1 if self.started else 0, info=what)
        self.started = True

    def add(self, count: int) -> None:
        if self.bar is not None:
            self.bar.update(self.task, total=self.bar.tasks[0].total + count)


@contextmanager
def _progress(total: int, enabled: bool) -> Iterator[_Steps]:
    """A rich progress bar on the shared console (:mod:`prunekit.console`), like the run's stages."""
    if not enabled:
        yield _Steps()
        return
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    from prunekit.console import console

    columns = [TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn(),
               TextColumn("{task.fields[info]}")]
    with Progress(*columns, console=console(), transient=False) as bar:
        steps = _Steps(bar, bar.add_task("report", total=total, info=""))
        yield steps
        bar.update(steps.task, completed=bar.tasks[0].total, info="done")


def build_report(run_dir: str | Path, *, complexity: Callable[[str], float] | None = None,
                 output: str | Path | None = None, registry: Any = None, progress: bool = True) -> Path:
    """Write ``report.html``, ``report/*.png`` and ``*.svg`` (each chart in both; the sample grid, pixels,
    as PNG only) and
    ``report/report.json`` for a run that deployed a mixture: the core sections, and those the
    plugins of ``registry`` (default: the installed ones) add through ``prunekit_report_sections``.
    ``progress``: show a progress bar on the console."""
    from prunekit import plots
    from prunekit.registry import get_registry
    from prunekit.run import atomic_write_json, atomic_write_text

    run_dir = Path(run_dir)
    target = Path(output) if output else run_dir / REPORT_FILE
    folder = run_dir / REPORT_DIR
    with _progress(3, progress) as steps:  # the data, the plugins' sections, the page; then each chart
        steps.step("reading the run")
        data = collect(run_dir, complexity=complexity)
        steps.step("plugin sections")
        extra = plugin_sections(registry or get_registry(), run_dir, data)
        builders = dict(chart_builders(data, run_dir))
        for section in extra:
            builders.update({name: _constant(chart) for name, chart in section.charts.items()})
        steps.add(len(builders))
        folder.mkdir(exist_ok=True)
        images: dict[str, Picture] = {}
        for name, build in builders.items():
            steps.step(f"chart {name}")
            chart = build()
            png = plots.png_bytes(chart)
            (folder / f"{name}.png").write_bytes(png)
            svg = None
            if isinstance(chart, plots.Chart) and chart.vector:
                svg_path = folder / f"{name}.svg"
                svg_path.write_bytes(chart.svg())
                svg = Path(os.path.relpath(svg_path, target.parent)).as_posix()
                width, height = chart.display_size
            elif isinstance(chart, plots.Chart):  # an image grid: PNG only
                width, height = chart.display_size
            else:  # a plugin's PIL image: PNG only, shown at its own size
                width, height = None, None
            images[name] = Picture(plots.data_uri(png), alt=name, svg=svg, width=width, height=height)
        steps.step("page")
        for s in data["samples"]:
            for key in ("file", "teacher_file"):
                path = run_files.samples_dir(run_dir) / s[key] if s.get(key) else None
                if path is not None and path.is_file():
                    images["sample:" + s[key]] = Picture(plots.data_uri(path.read_bytes()), alt=s["prompt"])
        atomic_write_json(folder / "report.json", {k: v for k, v in data.items() if k not in ("recipe", "histories")})
        atomic_write_text(target, render_html(data, images, extra))
    return target


def _constant(chart: Any) -> Any:
    """A builder that returns an already drawn chart (a plugin section's)."""
    return lambda: chart
