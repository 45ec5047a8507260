"""APTP's section of the run report: the training curves of its stages (``prunekit_report_sections``).

Pruning: the losses and the MACs ratio of ``prune_warmup`` then ``prune`` (histories
``prune_warmup`` / ``prune_joint``), the budget as a line; fine-tuning: the loss of every
``finetune_expert_i``. Drawn with :mod:`prunekit.plots` (matplotlib): noisy curves smoothed over the
faint raw ones, log axes where losses span decades. Any run made of these stages gets it (``aptp``,
and ``norm`` / ``uni_arch``, which reuse them).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunekit.hookspecs import hookimpl
from prunekit.report.sections import ReportSection, series

FINETUNE_EXPERT = "finetune_expert_"
PRUNE_STAGES = ("prune_warmup", "prune")


def _is_aptp_stage(name: str) -> bool:
    return name in PRUNE_STAGES or name.startswith(FINETUNE_EXPERT)


def training_curves(report: dict[str, Any]) -> dict[str, Any]:
    """``loss_prune``, ``macs_prune`` and ``loss_finetune`` charts (:class:`prunekit.plots.Chart`), those
    that have data. Losses are smoothed (the raw curve faint behind) and on a log axis when they span
    decades."""
    from prunekit import plots

    out: dict[str, Any] = {}
    histories = report["histories"]
    warm, joint = histories.get("prune_warmup", []), histories.get("prune_joint", [])
    if warm or joint:
        offset = warm[-1]["step"] if warm else 0
        phases = {"joint": offset + 0.5} if warm and joint else {}
        keys = [k for k in (joint or warm)[0] if k == "loss" or k.startswith("loss_")]
        out["loss_prune"] = plots.line_chart(
            {k: series(warm, k) + series(joint, k, offset) for k in keys}, smooth=True, ylabel="loss",
            title="Pruning losses (warm-up, then joint)", xlabel="step", vlines=phases)
        out["macs_prune"] = plots.line_chart(
            {"MACs ratio (batch mean)": series(warm, "macs_ratio") + series(joint, "macs_ratio", offset)},
            hlines={"target": float(report["manifest"].get("budget", 0.0))}, title="MACs ratio during pruning",
            xlabel="step", ylabel="MACs ratio", vlines=phases, smooth=True, log_y=False)
    finetune = {k.replace(FINETUNE_EXPERT, "E"): series(h, "loss") for k, h in histories.items()
                if k.startswith(FINETUNE_EXPERT)}
    if finetune:
        finetune = dict(sorted(finetune.items(), key=lambda kv: int(kv[0][1:]) if kv[0][1:].isdigit() else kv[0]))
        out["loss_finetune"] = plots.line_chart(finetune, title="Fine-tuning loss per expert", xlabel="step",
                                                ylabel="loss", smooth=True)
    return out


@hookimpl
def prunekit_report_sections(run_dir: Path, report: dict[str, Any]) -> list[ReportSection] | None:
    if not any(_is_aptp_stage(s) for s in report.get("stages", [])):
        return None
    return [ReportSection(id="losses", title="Training curves", charts=training_curves(report),
                          empty="No training histories.", after="samples")]
