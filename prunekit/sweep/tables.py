"""The comparison: one row per point (identity, grid axes, MACs ratio, metric columns), written as
``results.csv`` and ``results.md`` in the sweep directory, with the plots under it."""

from __future__ import annotations

import csv
import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prunekit.sweep.lookup import column_value, macs_ratio
from prunekit.sweep.plots import write_plots
from prunekit.sweep.schema import MACS_COLUMN, Sweep, _display_path
from prunekit.sweep.summary import write_summary


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
    summary, summary_files = write_summary(sweep, rows)
    if summary:
        lines += ["", *summary, "", "![summary](plots/summary.png)" if any(p.suffix == ".png" for p in summary_files)
                  else ""]
    written += summary_files
    plots = write_plots(sweep, rows)
    if plots:
        lines += ["", *[f"![{p.stem}](plots/{p.name})" for p in plots]]
    md_path = sweep.directory / "results.md"
    md_path.write_text("\n".join(lines) + "\n")
    written.append(md_path)
    return written + plots
