"""``norm``: weight-norm structured pruning (Li et al. 2017) to an exact MAC budget, then fine-tuning
of the one pruned model on the whole dataset (the paper's baseline, Table 1).

Stages: encode → select (unit scores, greedy selection under the budget) → finetune_expert_0
(physically pruned from the pretrained weights; APTP's fine-tuning on every sample) → export.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from prunekit.config import option
from prunekit.encode_config import EncodeConfig
from prunekit_plugins.baselines import single_expert
from prunekit_plugins.stages import (
    FINETUNE_INPUTS,
    FinetuneStageConfig,
    PruningContext,
    finetune_expert,
    one_expert_routing,
    prepare,
)
from prunekit_plugins.stages.finish import check_metric_paths


@dataclass
class NormFinetuneConfig(FinetuneStageConfig):
    iters: int = option(50000, ge=0, help="iterations on the whole dataset (paper: 50k; 0 = export as pruned)")


@dataclass
class NormConfig:
    requires: ClassVar[tuple[str, ...]] = ("model", "dataset", "budget")
    loss_inputs: ClassVar[dict[str, frozenset[str]]] = {"method.finetune.losses": FINETUNE_INPUTS}

    normalize: Literal["layer_mean", "param_count", "none"] = option(
        "layer_mean", help="how unit L1 norms are made comparable across layers (see docs/baselines.md)")
    depth: Literal["none", "aptp", "all"] = option(
        "none", help="also score whole blocks as depth units (aptp: the paper's 14 on SD 2.1)")
    finetune: NormFinetuneConfig = field(default_factory=NormFinetuneConfig)
    round_to: int | None = option(None, ge=1, help="kept channels per layer a multiple of this (selection respects it)")
    fill: float | None = option(
        0.01, ge=0, lt=1, help="a selection more than this fraction under the budget is redone skipping removals that "
                               "overshoot (coarse units, e.g. a small transformer's heads; null: plain greedy)")
    encode: EncodeConfig = field(default_factory=EncodeConfig)


class NormPruning:
    """Prune the lowest-norm units until the MAC budget is met, fine-tune the result on all samples."""

    init_logit = 3.0  # of the exported single-code router; its code is overwritten by the selection

    def __init__(self, config: NormConfig) -> None:
        self.config = config

    def run(self, run: Any) -> dict[str, Any]:
        check_metric_paths(run)
        cfg = self.config
        ctx = prepare(run, depth=cfg.depth, encode=cfg.encode, prompt_encoder=single_expert.constant_prompt_encoder)
        router = single_expert.single_code_router(ctx, self.init_logit)
        routing = run.stage("select", lambda: self._select(ctx, router))
        expert = run.stage("finetune_expert_0",
                           lambda: finetune_expert(ctx, 0, routing, cfg.finetune, round_to=cfg.round_to))
        export = run.stage("export", lambda: single_expert.export_one_expert(
            ctx, self._selected_router(ctx), routing, expert, self.init_logit))
        return single_expert.finish(run, ctx, {
            "selection": {k: routing[k] for k in ("normalize", "num_units", "kept_units", "target")}
                         | {"macs_ratio": routing["mean_macs_ratio"]},
            "experts": [{**expert, "share": 1.0}],
            "mixture": export,
        })

    def _selected_router(self, ctx: PruningContext) -> Any:
        from prunekit_plugins.stages import load_router

        return load_router(ctx, "joint", single_expert.single_code_router(ctx, self.init_logit))

    def _select(self, ctx: PruningContext, router: Any) -> dict[str, Any]:
        from safetensors.torch import save_file

        from prunekit_plugins.baselines.budget_selection import select_under_budget
        from prunekit_plugins.baselines.unit_norms import unit_l1_norms, unit_scores

        run, prunable = ctx.run, ctx.prunable
        l1, params = unit_l1_norms(prunable)
        scores = unit_scores(l1, params, prunable.inventory, self.config.normalize)
        # The recipe's budget (MACs, measured latency, ...) is what the selection must meet.
        selection = select_under_budget(ctx.budget, prunable.inventory, scores, float(ctx.budget.target),
                                        round_to=self.config.round_to, fill=self.config.fill)
        mask = selection.mask
        # The single code is the selected architecture, so the exported mixture routes to it.
        router.set_mask(mask)

        def write() -> None:
            run.artifact("unit_scores.json").write_text(json.dumps({
                "normalize": self.config.normalize, "l1": l1.tolist(), "params": params.tolist(),
                "score": scores.tolist(), "kept": mask.to(int).tolist()}))
            save_file({k: v.detach().contiguous() for k, v in router.state_dict().items()},
                      str(run.artifact("router_joint.safetensors")))

        run.on_main(write)
        return {**one_expert_routing(ctx, mask), "kept_units": int(mask.sum()),
                "num_units": prunable.num_units, "normalize": self.config.normalize}
