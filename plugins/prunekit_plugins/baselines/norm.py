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
from prunekit.evaluation import EvalConfig
from prunekit_plugins.aptp.method import FINETUNE_INPUTS, FinetuneStageConfig
from prunekit_plugins.baselines.single_expert import SingleArchitectureMethod


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
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)


class NormPruning(SingleArchitectureMethod):
    """Prune the lowest-norm units until the MAC budget is met, fine-tune the result on all samples."""

    def __init__(self, config: NormConfig) -> None:
        super().__init__(config)  # type: ignore[arg-type]  # APTP's stages read the same field names

    def run(self, run: Any) -> dict[str, Any]:
        self._check_metric_paths(run)
        self._prepare(run)
        self.router = self._new_router()
        routing = run.stage("select", self._select)
        expert = run.stage("finetune_expert_0", lambda: self._finetune_expert(0, routing))
        export = run.stage("export", lambda: self._export(routing, [expert]))
        return self._finish(run, {
            "selection": {k: routing[k] for k in ("normalize", "num_units", "kept_units", "target")}
                         | {"macs_ratio": routing["mean_macs_ratio"]},
            "experts": [{**expert, "share": 1.0}],
            "mixture": export,
        })

    def _select(self) -> dict[str, Any]:
        from safetensors.torch import save_file

        from prunekit_plugins.baselines.budget_selection import select_under_budget
        from prunekit_plugins.baselines.unit_norms import unit_l1_norms, unit_scores

        run, prunable = self.run_, self.prunable
        h, w = self.latent_hw
        l1, params = unit_l1_norms(prunable)
        scores = unit_scores(l1, params, prunable.inventory, self.config.normalize)
        mac_model = prunable.mac_model(height=h, width=w, text_len=self.text_len)
        selection = select_under_budget(mac_model, prunable.inventory, scores, float(self.budget.target),
                                        round_to=self.config.round_to)
        mask = selection.mask
        # The single code is the selected architecture, so the exported mixture routes to it.
        self.router.set_mask(mask)

        def write() -> None:
            run.artifact("unit_scores.json").write_text(json.dumps({
                "normalize": self.config.normalize, "l1": l1.tolist(), "params": params.tolist(),
                "score": scores.tolist(), "kept": mask.to(int).tolist()}))
            save_file({k: v.detach().contiguous() for k, v in self.router.state_dict().items()},
                      str(run.artifact("router_joint.safetensors")))

        run.on_main(write)
        return {**self._one_expert_routing(mask), "kept_units": int(mask.sum()),
                "num_units": prunable.num_units, "normalize": self.config.normalize}
