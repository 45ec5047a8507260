"""``aptp``: Adaptive Prompt-Tailored Pruning (Ganjdanesh et al.), assembled from the stage library.

Stages: encode (latents, text and prompt embeddings, once) → prune_warmup (the predictor gates the
U-Net directly) → prune (predictor + codes, routed by optimal transport) → route (every training
prompt to its nearest code; per-expert masks and costs) → finetune_expert_i (physically pruned from
the pretrained weights, fine-tuned on its prompts with the recipe's fine-tuning losses) → export
(mixture/). Which losses, gates, router and budget are used is entirely the recipe's choice; the
stages are the functions of :mod:`prunekit_plugins.stages`.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

from prunekit.config import option
from prunekit.encode_config import EncodeConfig
from prunekit_plugins.stages import (
    FINETUNE_INPUTS,
    PRUNE_INPUTS,
    FinetuneStageConfig,
    PruneStageConfig,
    export_mixture,
    finetune_expert,
    load_router,
    prepare,
    route_to_codes,
    train_router,
)
from prunekit_plugins.stages.finish import check_metric_paths, deploy_mixture


@dataclass
class APTPConfig:
    requires: ClassVar[tuple[str, ...]] = ("model", "dataset", "prompt_encoder", "router", "gate", "budget", "losses")
    capabilities: ClassVar[dict[str, str]] = {"router": "trainable"}
    loss_inputs: ClassVar[dict[str, frozenset[str]]] = {"losses": PRUNE_INPUTS, "method.finetune.losses": FINETUNE_INPUTS}

    prune: PruneStageConfig = field(default_factory=PruneStageConfig)
    finetune: FinetuneStageConfig = field(default_factory=FinetuneStageConfig)
    depth: str = option("aptp", help="depth-gate layout: aptp (the paper's 14 on SD 2.1), all or none")
    round_to: int | None = option(None, ge=1, help="round pruned channel counts up to a multiple")
    encode: EncodeConfig = field(default_factory=EncodeConfig)

    def check(self) -> list[str]:
        return [] if self.depth in ("aptp", "all", "none") else [f"depth: {self.depth!r} is not one of aptp, all, none"]


class APTP:
    """Prune a U-Net into prompt-routed experts, fine-tune each on its prompts, export a mixture."""

    def __init__(self, config: APTPConfig) -> None:
        self.config = config

    def run(self, run: Any) -> dict[str, Any]:
        check_metric_paths(run)
        ctx = prepare(run, depth=self.config.depth, encode=self.config.encode,
                      prompt_encoder=lambda: run.build("prompt_encoder"))
        gate = run.build("gate", groups=ctx.prunable.groups)

        def new_router() -> Any:
            return run.build("router", embed_dim=ctx.embed_dim, num_units=ctx.num_units)

        # Building a router draws from the global RNG, which the warm-up router's initial weights come
        # from: this first one fixes that order, so a seed gives the same run as in earlier versions.
        num_codes = new_router().num_codes
        losses = run.build_all("losses")
        cfg = self.config

        def phase(name: Any) -> dict[str, Any]:
            record, _ = train_router(ctx, name, cfg.prune, new_router=new_router, gate=gate, losses=losses)
            return record

        warm = run.stage("prune_warmup", lambda: phase("warmup"))
        joint = run.stage("prune", lambda: phase("joint"))
        routing = run.stage("route", lambda: route_to_codes(ctx, load_router(ctx, "joint", new_router()), gate))
        experts = [run.stage(f"finetune_expert_{i}",
                             lambda i=i: finetune_expert(ctx, i, routing, cfg.finetune, round_to=cfg.round_to))
                   for i in range(num_codes)]
        deployed = {"prompt_encoder": run.recipe.data["prompt_encoder"], "router": run.recipe.data["router"]}
        export = run.stage("export", lambda: export_mixture(
            ctx, load_router(ctx, "joint", new_router()), routing, experts, deployed=deployed))
        return deploy_mixture(run, {
            "prune": {"warmup": warm, "joint": joint},
            "routing": {k: routing[k] for k in ("counts", "macs_ratio", "mean_macs_ratio", "macs_ratio_spread", "target") if k in routing},
            "experts": [{**e, "share": c / max(1, sum(routing["counts"]))}
                        for e, c in zip(experts, routing["counts"])],
            "mixture": export,
        }, base=ctx.pipeline)
