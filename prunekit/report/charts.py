"""The charts of the report's core sections: metrics with their bootstrap intervals, experts (budget and
share), architecture (retained MACs per block), complexity per expert, and the sample grid. Each is a
:class:`prunekit.plots.Chart` (written as PNG and SVG)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

from prunekit import run_files
from prunekit.report.architecture import column_groups


def chart_builders(data: Mapping[str, Any], run_dir: Path) -> dict[str, Callable[[], Any]]:
    """The core sections' charts by file stem, each as a function that draws it (only those that
    have data)."""
    from prunekit import plots

    out: dict[str, Callable[[], Any]] = {}
    manifest = data["manifest"]
    experts = manifest["experts"]
    names = [f"E{e['id']}" for e in experts]
    total = max(1, sum(data["counts"]))
    intervals = (data.get("intervals") or {}).get("metrics", {})
    if intervals:
        role = data["intervals"].get("role", "mixture")
        level = data["intervals"].get("level", 0.95)

        def metric_chart() -> Any:
            panels = {}
            for key, entry in intervals.items():
                rows = [(label, s["mean"], s["low"], s["high"]) for label, s in
                        [("teacher", entry.get("teacher")), (role, entry.get(role))] if s]
                rows += [(f"E{e}", s["mean"], s["low"], s["high"]) for e, s in sorted(entry.get("experts", {}).items(),
                                                                                      key=lambda x: int(x[0]))]
                panels[key] = rows
            colors = {"teacher": plots.GREY, role: plots.PALETTE[0]}
            colors.update({f"E{e['id']}": plots.color(i + 1) for i, e in enumerate(experts)})
            return plots.interval_chart(panels, colors=colors,
                                        title=f"Mean per-image score with its {level:.0%} bootstrap interval")

        out["metrics"] = metric_chart
    shares = {e.get("expert"): e.get("eval_share") for e in data["metrics"].get("experts", [])}
    eval_share = [shares.get(e["id"]) for e in experts]
    bars = {"MACs ratio": [e["macs_ratio"] for e in experts], "share of training prompts": [c / total for c in data["counts"]]}
    if all(isinstance(v, (int, float)) for v in eval_share):
        bars["share of eval prompts"] = eval_share
    out["experts"] = lambda: plots.bar_chart(names, bars, title="Budget and share of prompts per expert", ylim=(0.0, 1.1))
    arch = data["architecture"]
    out["architecture"] = lambda: plots.heatmap(
        [e["retained"] for e in arch["experts"]], row_labels=[f"E{e['expert']} ({e['macs_ratio']:.2f})" for e in arch["experts"]],
        col_labels=arch["labels"], col_groups=column_groups(arch["blocks"]), colorbar="retained fraction of dense MACs",
        title="Retained MACs per U-Net block (R = ResNet, A = attention)")
    order = sorted(range(len(experts)), key=lambda i: experts[i]["macs_ratio"])
    means = data["complexity"]["mean_by_expert"]
    spans = data["complexity"].get("interval_by_expert") or [None] * len(means)
    used = [i for i in order if means[i] is not None]
    if used:
        out["complexity"] = lambda: plots.bar_chart(
            [f"E{experts[i]['id']} ({experts[i]['macs_ratio']:.2f})" for i in used], {"mean complexity": [means[i] for i in used]},
            errors={"mean complexity": [tuple(spans[i]) if spans[i] else None for i in used]}, ylabel="complexity",
            title="Mean prompt complexity per expert (95% bootstrap interval; experts by MACs ratio)")
    if data["samples"]:
        out["samples"] = lambda: sample_grid(data, run_dir)
    return out


def sample_grid(data: Mapping[str, Any], run_dir: Path) -> Any:
    """One row per expert: each sample's teacher image (when written) next to the expert's."""
    from PIL import Image

    from prunekit import plots

    folder = run_files.samples_dir(run_dir)
    rows: dict[int, list[Any]] = {}
    paired = all(s.get("teacher_file") for s in data["samples"])
    for s in data["samples"]:
        files = [s["teacher_file"], s["file"]] if paired else [s["file"]]
        if all((folder / f).is_file() for f in files):
            rows.setdefault(int(s["expert"]), []).extend(Image.open(folder / f).convert("RGB") for f in files)
    ratio = {int(e["id"]): e["macs_ratio"] for e in data["manifest"]["experts"]}
    width = max((len(r) for r in rows.values()), default=0)
    return plots.image_grid([rows[e] for e in sorted(rows)], row_labels=[f"E{e} ({ratio.get(e, 0):.2f})" for e in sorted(rows)],
                            col_labels=["teacher", "expert"] * (width // 2) if paired else None,
                            title="Samples per expert: teacher | expert, same prompt and seed" if paired
                            else "Samples per expert (prompts routed to it)")


def charts(data: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """The core sections' charts (:class:`prunekit.plots.Chart`) by file stem."""
    return {name: build() for name, build in chart_builders(data, run_dir).items()}
