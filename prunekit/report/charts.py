"""The charts of the report's core sections: experts (budget and share), architecture (retained MACs
per block), complexity per expert, and the sample grid."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from prunekit import run_files
from prunekit.report.architecture import column_groups


def charts(data: Mapping[str, Any], run_dir: Path) -> dict[str, Any]:
    """The core sections' PNG charts (PIL images) by file stem."""
    from PIL import Image

    from prunekit import plots

    out: dict[str, Any] = {}
    manifest = data["manifest"]
    experts = manifest["experts"]
    names = [f"E{e['id']}" for e in experts]
    total = max(1, sum(data["counts"]))
    out["experts"] = plots.bar_chart(
        names, {"MACs ratio": [e["macs_ratio"] for e in experts], "share of prompts": [c / total for c in data["counts"]]},
        title="Budget and share of training prompts per expert", ylim=(0.0, 1.1))
    arch = data["architecture"]
    out["architecture"] = plots.heatmap(
        [e["retained"] for e in arch["experts"]], row_labels=[f"E{e['expert']} ({e['macs_ratio']:.2f})" for e in arch["experts"]],
        col_labels=arch["labels"], col_groups=column_groups(arch["blocks"]),
        title="Retained MACs per U-Net block (R = ResNet, A = attention)")
    order = sorted(range(len(experts)), key=lambda i: experts[i]["macs_ratio"])
    means = data["complexity"]["mean_by_expert"]
    used = [i for i in order if means[i] is not None]
    if used:
        out["complexity"] = plots.bar_chart(
            [f"E{experts[i]['id']} ({experts[i]['macs_ratio']:.2f})" for i in used], {"mean complexity": [means[i] for i in used]},
            title="Mean prompt complexity per expert (experts by MACs ratio)")
    if data["samples"]:
        rows: dict[int, list[Any]] = {}
        for s in data["samples"]:
            path = run_files.samples_dir(run_dir) / s["file"]
            if path.is_file():
                rows.setdefault(int(s["expert"]), []).append(Image.open(path).convert("RGB"))
        if rows:
            ratio = {int(e["id"]): e["macs_ratio"] for e in experts}
            out["samples"] = plots.image_grid([rows[e] for e in sorted(rows)],
                                              row_labels=[f"E{e} ({ratio.get(e, 0):.2f})" for e in sorted(rows)],
                                              title="Samples per expert (prompts routed to it)")
    return out
