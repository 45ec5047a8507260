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
from prunekit_plugins.baselines import single_expert
from prunekit_plugins.stages import (
    FINETUNE_INPUTS,
    PRUNE_INPUTS,
    FinetuneStageConfig,
    PruneStageConfig,
    PruningContext,
    finetune_expert,
    load_router,
    one_expert_routing,
    prepare,
    route_to_codes,
    train_router,
)
from prunekit_plugins.stages.finish import check_metric_paths


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
    finalize: Literal["threshold", "budget"] = option(
        "threshold", help="threshold: the gate's hard mask (the paper's); budget: the highest logits that "
                          "fit the MAC budget exactly (for short runs whose code has not polarised)")
    fill: float | None = option(
        0.01, ge=0, lt=1, help="finalize: budget: a selection more than this fraction under the budget is redone "
                               "skipping removals that overshoot (as norm's; null: plain greedy)")


class UniArch:
    """Learn one architecture under the MAC budget, fine-tune it on every sample."""

    def __init__(self, config: UniArchConfig) -> None:
        self.config = config
        p = config.prune
        # The router-training stage with no warm-up (there is no predictor to warm up).
        self.prune = PruneStageConfig(warmup_iters=0, iters=p.iters, lr=p.lr, lr_warmup=p.lr_warmup,
                                      lr_cooldown=p.lr_cooldown, budget_on=p.budget_on,
                                      micro_batch=p.micro_batch, grad_accum=p.grad_accum)

    def run(self, run: Any) -> dict[str, Any]:
        check_metric_paths(run)
        cfg = self.config
        ctx = prepare(run, depth=cfg.depth, encode=cfg.encode, prompt_encoder=single_expert.constant_prompt_encoder)
        gate = run.build("gate", groups=ctx.prunable.groups)

        def new_router() -> Any:
            return single_expert.single_code_router(ctx, cfg.init_logit)

        new_router()  # draws the global RNG in the same order as every earlier run (see aptp.method)
        losses = run.build_all("losses")

        def phase(name: Any) -> dict[str, Any]:
            record, _ = train_router(ctx, name, self.prune, new_router=new_router, gate=gate, losses=losses)
            return record

        warm = run.stage("prune_warmup", lambda: phase("warmup"))
        joint = run.stage("prune", lambda: phase("joint"))
        routing = run.stage("route", lambda: self._route(ctx, load_router(ctx, "joint", new_router()), gate))
        expert = run.stage("finetune_expert_0",
                           lambda: finetune_expert(ctx, 0, routing, cfg.finetune, round_to=cfg.round_to))
        export = run.stage("export", lambda: single_expert.export_one_expert(
            ctx, load_router(ctx, "joint", new_router()), routing, expert, cfg.init_logit))
        return single_expert.finish(run, ctx, {
            "prune": {"warmup": warm, "joint": joint},
            "routing": {k: routing[k] for k in ("counts", "macs_ratio", "mean_macs_ratio", "target")},
            "experts": [{**expert, "share": 1.0}],
            "mixture": export,
        })

    def _route(self, ctx: PruningContext, router: Any, gate: Any) -> dict[str, Any]:
        """threshold: the gate's hard mask of the code; budget: the highest logits that fit exactly."""
        if self.config.finalize == "threshold":
            return route_to_codes(ctx, router, gate)
        from prunekit_plugins.baselines.budget_selection import select_under_budget

        logits = router.codes.detach()[0].double().cpu()
        selection = select_under_budget(ctx.budget, ctx.prunable.inventory, logits, float(ctx.budget.target),
                                        round_to=self.config.round_to, fill=self.config.fill)
        return one_expert_routing(ctx, selection.mask)
