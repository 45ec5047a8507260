"""``uni_arch``: one learned architecture for every prompt (the paper's Uni-Arch baseline, Table 3).

A single code of gate logits is trained with the recipe's gate (Gumbel-sigmoid) and losses (DDPM +
resource; distillation if the recipe adds it), with no router and no prompt encoder; the resulting
architecture is physically pruned and fine-tuned on the whole dataset. It runs APTP's stages
unchanged on a ``single_code`` router: encode → prune_warmup (0 steps: there is no predictor) →
prune → route (every prompt to the one code) → finetune_expert_0 → export.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from prunekit.config import option
from prunekit.encode_config import EncodeConfig
from prunekit.evaluation import EvalConfig
from prunekit_plugins.aptp.method import (
    FINETUNE_INPUTS,
    PRUNE_INPUTS,
    APTPConfig,
    FinetuneStageConfig,
    PruneStageConfig,
)
from prunekit_plugins.baselines.single_expert import SingleArchitectureMethod


@dataclass
class UniArchPruneConfig:
    iters: int = option(3000, ge=1, help="code-training iterations (APTP: 500 warm-up + 2500 joint)")
    lr: float = option(2e-4, gt=0)
    lr_warmup: int = option(100, ge=0, help="linear LR warm-up iterations")
    lr_cooldown: int = option(0, ge=0, help="linear LR decay to zero over the last iterations")
    budget_on: Literal["deployed", "sampled"] = option(
        "deployed", help="deployed: the resource loss charges the code's hard mask (straight-through); "
                         "sampled: the noisy training gates")
    micro_batch: int | None = option(None, ge=1, help="overrides engine.micro_batch for this stage")
    grad_accum: int | None = option(None, ge=1, help="overrides engine.grad_accum for this stage")


@dataclass
class UniArchConfig:
    requires: ClassVar[tuple[str, ...]] = ("model", "dataset", "gate", "budget", "losses")
    # One code: trained with the pruning losses, but nothing to route (no code similarity or assignment).
    loss_inputs: ClassVar[dict[str, frozenset[str]]] = {
        "losses": PRUNE_INPUTS - {"code_similarity", "code_assignment"}, "method.finetune.losses": FINETUNE_INPUTS}

    prune: UniArchPruneConfig = field(default_factory=UniArchPruneConfig)
    finetune: FinetuneStageConfig = field(default_factory=FinetuneStageConfig)
    depth: Literal["aptp", "all", "none"] = option("aptp", help="depth-gate layout")
    round_to: int | None = option(None, ge=1, help="round pruned channel counts up to a multiple")
    encode: EncodeConfig = field(default_factory=EncodeConfig)
    init_logit: float = option(3.0, help="initial code logit: sigmoid(3/0.4) ~ 1, i.e. start dense")
    eval: EvalConfig = field(default_factory=EvalConfig)
    finalize: Literal["threshold", "budget"] = option(
        "threshold", help="threshold: the gate's hard mask (the paper's); budget: the highest logits that "
                          "fit the MAC budget exactly (for short runs whose code has not polarised)")


class UniArch(SingleArchitectureMethod):
    """Learn one architecture under the MAC budget, fine-tune it on every sample."""

    def __init__(self, config: UniArchConfig) -> None:
        p = config.prune
        super().__init__(APTPConfig(
            prune=PruneStageConfig(warmup_iters=0, iters=p.iters, lr=p.lr, lr_warmup=p.lr_warmup,
                                   lr_cooldown=p.lr_cooldown, budget_on=p.budget_on, micro_batch=p.micro_batch, grad_accum=p.grad_accum),
            finetune=config.finetune, depth=config.depth, round_to=config.round_to,
            encode=config.encode, eval=config.eval,
        ))
        self.init_logit = config.init_logit
        self.finalize = config.finalize

    def _route(self) -> dict[str, Any]:
        if self.finalize == "threshold":
            return super()._route()
        from prunekit_plugins.baselines.budget_selection import select_under_budget

        self._load_router("joint")
        h, w = self.latent_hw
        mac_model = self.prunable.mac_model(height=h, width=w, text_len=self.text_len)
        logits = self.router.codes.detach()[0].double().cpu()
        selection = select_under_budget(mac_model, self.prunable.inventory, logits, float(self.budget.target),
                                        round_to=self.config.round_to)
        return self._one_expert_routing(selection.mask)
