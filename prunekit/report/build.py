"""Build ``report.html`` (and ``report/*.png``, ``report/report.json``) from a run directory alone."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

from prunekit import run_files
from prunekit.report.charts import charts
from prunekit.report.data import collect
from prunekit.report.page import render_html
from prunekit.report.sections import plugin_sections

REPORT_FILE = "report.html"
REPORT_DIR = "report"


def build_report(run_dir: str | Path, *, complexity: Callable[[str], float] | None = None,
                 output: str | Path | None = None, registry: Any = None) -> Path:
    """Write ``report.html``, ``report/*.png`` and ``report/report.json`` for a run that deployed a
    mixture: the core sections, and those the plugins of ``registry`` (default: the installed ones)
    add through ``prunekit_report_sections``."""
    from prunekit import plots
    from prunekit.registry import get_registry
    from prunekit.run import atomic_write_json, atomic_write_text

    run_dir = Path(run_dir)
    data = collect(run_dir, complexity=complexity)
    extra = plugin_sections(registry or get_registry(), run_dir, data)
    folder = run_dir / REPORT_DIR
    folder.mkdir(exist_ok=True)
    images: dict[str, str] = {}
    drawn = dict(charts(data, run_dir))
    for section in extra:
        drawn.update(section.charts)
    for name, image in drawn.items():
        png = plots.png_bytes(image)
        (folder / f"{name}.png").write_bytes(png)
        images[name] = plots.data_uri(png)
    for s in data["samples"]:
        path = run_files.samples_dir(run_dir) / s["file"]
        if path.is_file():
            images["sample:" + s["file"]] = plots.data_uri(path.read_bytes())
    atomic_write_json(folder / "report.json", {k: v for k, v in data.items() if k not in ("recipe", "histories")})
    target = Path(output) if output else run_dir / REPORT_FILE
    atomic_write_text(target, render_html(data, images, extra))
    return target
