"""Points that differ only in averaged axes (seeds) summarised as one line: mean, standard deviation,
count, and the forest plot of the summary (``plots/summary.png``).

A difference between two lines is called a difference only when the intervals mean +- std do not
overlap (:func:`separated`); with three seeds that is a rough screen, not a significance test, and
the tables say so.
"""

from __future__ import annotations

import json
import math
import statistics
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from prunekit.sweep.lookup import _number
from prunekit.sweep.schema import MACS_COLUMN, Sweep


def _stats(values: Sequence[float]) -> dict[str, float | int | None]:
    n = len(values)
    if not n:
        return {"mean": None, "std": None, "n": 0}
    return {"mean": statistics.fmean(values), "std": statistics.stdev(values) if n > 1 else None, "n": n}


def summary_rows(rows: Sequence[Mapping[str, Any]], *, axes: Sequence[str], average: Sequence[str],
                 columns: Sequence[str]) -> list[dict[str, Any]]:
    """One line per series and value of the axes that are not averaged over, in first-seen order:
    ``{"series", <kept axes>, "points", "completed", <column>: {"mean", "std", "n"}}``. Only completed
    rows with a finite value count towards a column."""
    kept = [a for a in axes if a not in average]
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        key = json.dumps([row["series"], *[row.get(a) for a in kept]], default=str)
        groups.setdefault(key, []).append(row)
    out = []
    for members in groups.values():
        first = members[0]
        done = [r for r in members if r["status"] == "completed"]
        line: dict[str, Any] = {"series": first["series"], **{a: first.get(a) for a in kept},
                                "points": len(members), "completed": len(done)}
        for column in columns:
            values = [v for v in (_number(r.get(column)) for r in done) if v is not None and math.isfinite(v)]
            line[column] = _stats(values)
        out.append(line)
    return out


def separated(a: Mapping[str, Any], b: Mapping[str, Any]) -> bool:
    """Whether two summaries' mean +- std intervals are disjoint (both need a std)."""
    if a.get("std") is None or b.get("std") is None or a.get("mean") is None or b.get("mean") is None:
        return False
    return a["mean"] + a["std"] < b["mean"] - b["std"] or b["mean"] + b["std"] < a["mean"] - a["std"]


def format_stat(stat: Mapping[str, Any]) -> str:
    if stat.get("mean") is None:
        return ""
    mean = f"{stat['mean']:.4g}"
    return mean if stat.get("std") is None else f"{mean} ± {stat['std']:.2g}"


def _label(line: Mapping[str, Any], kept: Sequence[str]) -> str:
    extra = ", ".join(f"{a}={line[a]}" for a in kept if line.get(a) is not None)
    return f"{line['series']} ({extra})" if extra else str(line["series"])


def summary_markdown(lines: Sequence[Mapping[str, Any]], *, kept: Sequence[str], columns: Sequence[str],
                     average: Sequence[str]) -> list[str]:
    header = ["series", *kept, "completed", *columns]
    out = [f"## Summary over {', '.join(average)}", "",
           f"Mean ± standard deviation over the `{'`, `'.join(average)}` values of each line (n = completed "
           "points). Two lines differ when their mean ± std intervals do not overlap.", "",
           "| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    for line in lines:
        cells = [str(line["series"]), *[str(line.get(a, "")) for a in kept],
                 f"{line['completed']}/{line['points']}", *[format_stat(line[c]) for c in columns]]
        out.append("| " + " | ".join(cells) + " |")
    return out


def write_summary(sweep: Sweep, rows: Sequence[Mapping[str, Any]]) -> tuple[list[str], list[Path]]:
    """The summary's markdown lines and the files written (``summary.json``, ``plots/summary.png``);
    nothing when no point is averaged over (every line would hold one point)."""
    axes = list(sweep.axis_names.values())
    average = [sweep.axis_names.get(a, a) for a in sweep.plot.average]
    if not any(a in axes for a in average):
        return [], []
    columns = [MACS_COLUMN, *[c.name for c in sweep.metrics]]
    kept = [a for a in axes if a not in average]
    lines = summary_rows(rows, axes=axes, average=average, columns=columns)
    path = sweep.directory / "summary.json"
    path.write_text(json.dumps(lines, indent=1))
    written = [path]
    panels = {c: [(_label(line, kept), line[c]["mean"],
                   None if line[c]["std"] is None else line[c]["mean"] - line[c]["std"],
                   None if line[c]["std"] is None else line[c]["mean"] + line[c]["std"])
                  for line in lines if line[c]["mean"] is not None]
              for c in columns}
    panels = {c: p for c, p in panels.items() if p}
    if panels:
        from prunekit.plots import interval_chart

        folder = sweep.directory / "plots"
        folder.mkdir(exist_ok=True)
        written.append(interval_chart(panels, title=f"{sweep.name}: mean ± std over {', '.join(average)}")
                       .save(folder / "summary.png"))
    return summary_markdown(lines, kept=kept, columns=columns, average=average), written
