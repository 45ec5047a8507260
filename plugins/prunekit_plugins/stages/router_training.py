"""Train a router's architecture predictor (and codes) to gate the frozen U-Net under a budget.

Two phases (APTP §3.3): ``warmup`` — the predictor's output gates the U-Net directly, each prompt its
own architecture; ``joint`` — prompts are assigned to the router's codes (optimal transport for the
APTP router) and the U-Net is gated by the assigned code. The losses are the recipe's; the teacher
U-Net runs only when a loss needs its prediction or block outputs.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, replace
from typing import Any, Literal

from prunekit import run_files
from prunekit.config import option
from prunekit.losses import DENOISING, DISTILLATION
from prunekit_plugins.stages.context import (
    PruningContext,
    diffusion_batch,
    history_tail_mean,
    stage_engine_config,
)

# What router training hands its losses.
PRUNE_INPUTS = DENOISING | DISTILLATION | {"prompt_embeddings", "arch_vectors", "code_similarity",
                                           "code_assignment", "cost_ratio", "cost_target"}

Phase = Literal["warmup", "joint"]


@dataclass
class PruneStageConfig:
    warmup_iters: int = option(500, ge=0, help="predictor-only iterations (its output gates the U-Net)")
    iters: int = option(2500, ge=1, help="joint predictor + codes iterations")
    lr: float = option(2e-4, gt=0)
    lr_warmup: int = option(100, ge=0, help="linear LR warm-up iterations")
    lr_cooldown: int = option(0, ge=0, help="linear LR decay to zero over the last joint iterations")
    budget_on: Literal["deployed", "sampled"] = option(
        "deployed",
        help="what the resource loss charges: deployed = the hard architectures the prompts are routed "
             "to at inference (straight-through); sampled = the noisy training gates (the paper's eq. 15)")
    micro_batch: int | None = option(None, ge=1, help="overrides engine.micro_batch for this stage")
    grad_accum: int | None = option(None, ge=1, help="overrides engine.grad_accum for this stage")


def load_router(ctx: PruningContext, phase: str, router: Any) -> Any:
    """``router`` with the weights the ``phase`` stage saved; returns it."""
    from safetensors.torch import load_file

    router.load_state_dict(load_file(str(run_files.router_file(ctx.run, phase))))
    return router


def train_router(ctx: PruningContext, phase: Phase, cfg: PruneStageConfig, *, new_router: Callable[[], Any],
                 gate: Any, losses: Mapping[str, Any]) -> tuple[dict[str, Any], Any]:
    """Run one phase; returns the stage record and the trained router (also saved as an artifact)."""
    import torch
    import torch.nn.functional as F
    from safetensors.torch import save_file

    from prunekit.capture import capture_block_outputs
    from prunekit.engine import micro_batch_indices, train
    from prunekit.losses import TEACHER, LossInputs, losses_need
    from prunekit.objectives import add_noise
    from prunekit.shards import RowPrefetcher

    run, seed = ctx.run, ctx.seed
    steps = cfg.warmup_iters if phase == "warmup" else cfg.iters
    # A fresh module per phase: DeepSpeed leaves hooks on the parameters of a module it wrapped.
    router = new_router()
    if phase == "joint":
        if cfg.warmup_iters > 0:
            load_router(ctx, "warmup", router)
        with torch.no_grad():
            g = torch.Generator().manual_seed(seed)
            sample = torch.randperm(len(ctx.encoded), generator=g)[:4096].tolist()
            router.init_codes(router.embed(ctx.encoded.rows(sample, ["z"])["z"]), generator=g)
    router.codes.requires_grad_(phase == "joint")
    if steps == 0:
        run.on_main(lambda: save_file({k: v.detach().contiguous() for k, v in router.state_dict().items()},
                                      str(run_files.router_file(run, phase))))
        return {"steps": 0}, router

    # The router is tiny: it trains in fp32 whatever the precision, so its gate logits, the cost
    # model and the resource loss stay fp32; the frozen U-Net it gates runs in the engine's dtype.
    engine_cfg = replace(stage_engine_config(run, cfg), precision="fp32")
    encoded, budget, prunable, unet = ctx.encoded, ctx.budget, ctx.prunable, ctx.denoiser
    conditioning = ctx.conditioning
    scheduler = ctx.pipeline.scheduler
    n = len(encoded)
    needs = losses_need(losses)
    want_teacher = bool(needs & TEACHER)
    want_blocks = bool(needs & {"block_outputs", "teacher_block_outputs"})
    target = budget.target

    reader = RowPrefetcher(encoded, ["z", "latents", *conditioning.columns],
                           lambda index: micro_batch_indices(n, engine_cfg.micro_batch, index, seed))

    def batch_fn(index: int) -> dict[str, Any]:
        rows = reader.rows(index)
        cond = {name: rows[name] for name in conditioning.columns}
        return {"z": rows["z"], **diffusion_batch(rows["latents"], cond, scheduler)}

    def loss_fn(router: Any, batch: dict[str, Any], step: int) -> tuple[Any, dict[str, float]]:
        x0, cond, noise, t = batch["latents"], batch["cond"], batch["noise"], batch["timesteps"]
        e, codes = router(batch["z"])  # the one read of the router's parameters (ZeRO-3)
        weights, code_similarity, assigned = None, None, None
        if phase == "warmup":
            logits = e
            deployed_ratio = budget.ratio(gate.deployed(e)).mean()  # each prompt's own architecture
        else:
            assigned = router.assign(e, codes)
            logits = codes[assigned]
            counts = torch.bincount(assigned, minlength=router.num_codes).float()
            weights = 1.0 / (counts[assigned] * (counts > 0).sum())
            # Charged at the codes prompts are routed to at inference, which OT's equipartition
            # does not give: the exported mixture's mean cost is what the budget is about.
            nearest = router.nearest(e.detach(), codes.detach())
            deployed_ratio = budget.ratio(gate.deployed(codes))[nearest].mean()
            code_similarity = F.normalize(e, dim=-1) @ F.normalize(codes.detach(), dim=-1).T
        gates = gate(logits, training=True)
        noisy = add_noise(scheduler, x0, noise, t)
        teacher_pred, teacher_blocks = None, []
        if want_teacher:
            with torch.no_grad(), capture_block_outputs(unet, want_blocks) as teacher_blocks:
                teacher_pred = conditioning.gated(prunable, noisy, t, cond)
        with capture_block_outputs(unet, want_blocks) as blocks:
            pred = conditioning.gated(prunable, noisy, t, cond, gates)
        ratio = deployed_ratio if cfg.budget_on == "deployed" else budget.ratio(gates).mean()
        inputs = LossInputs(
            pred=pred, noise=noise, latents=x0, timesteps=t, scheduler=scheduler,
            teacher_pred=teacher_pred, block_outputs=blocks, teacher_block_outputs=teacher_blocks,
            sample_weights=weights, prompt_embeddings=batch["z"], arch_vectors=gate(e, training=True),
            cost_ratio=ratio, cost_target=target, code_similarity=code_similarity, code_assignment=assigned,
        )
        parts = {name: loss(inputs) for name, loss in losses.items()}
        logs = {f"loss_{k}": float(v.detach()) for k, v in parts.items()}
        logs["macs_ratio"] = float(ratio.detach())
        logs["macs_deployed"] = float(deployed_ratio.detach())
        if phase == "joint":
            logs["codes_used"] = float((counts > 0).sum())
            logs["codes_nearest"] = float(torch.unique(nearest).numel())
        return sum(parts.values()), logs

    start = time.perf_counter()
    with run.progress(f"prune ({phase})", steps) as advance:
        result = train(
            router, loss_fn, batch_fn, cfg=engine_cfg, lr=cfg.lr, steps=steps,
            warmup_steps=cfg.lr_warmup, cooldown_steps=cfg.lr_cooldown if phase == "joint" else 0,
            ckpt_dir=run.checkpoint_dir(f"prune_{phase}"), seed=seed,
            name=f"prune_{phase}",
            on_step=lambda s, rec: advance(1, loss=rec["loss"], macs=rec["macs_ratio"]),
            prefetch=reader.prefetch,
        )
    reader.close()
    router = new_router()
    router.load_state_dict(result.state_dict)

    def write() -> None:
        save_file({k: v.contiguous().cpu() for k, v in result.state_dict.items()},
                  str(run_files.router_file(run, phase)))
        run_files.write_history(run, f"prune_{phase}", result.history)

    run.on_main(write)
    return {
        "steps": steps,
        "seconds": round(time.perf_counter() - start, 2),
        "final_loss": history_tail_mean(result.history, "loss"),
        "final_macs_ratio": history_tail_mean(result.history, "macs_ratio"),
        **result.timing(),
    }, router
