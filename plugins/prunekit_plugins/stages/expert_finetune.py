"""Physically prune one expert from the pretrained U-Net and fine-tune it on the samples routed to it."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prunekit import run_files
from prunekit.config import option
from prunekit.losses import DENOISING, DISTILLATION
from prunekit_plugins.stages.context import (
    PruningContext,
    diffusion_batch,
    history_tail_mean,
    stage_engine_config,
)
from prunekit_plugins.stages.routing import read_routing

# What expert fine-tuning hands its losses: no router, so nothing about prompts or codes.
FINETUNE_INPUTS = DENOISING | DISTILLATION
PAPER_FINETUNE_LOSSES: dict[str, Any] = {
    "ddpm": {"weight": 1e-4}, "distill_output": {"weight": 1.0}, "distill_block": {"weight": 1.0}}


@dataclass
class FinetuneStageConfig:
    iters: int = option(30000, ge=0, help="iterations per expert (0 = export the pruned experts as they are)")
    lr: float = option(1e-5, gt=0)
    lr_warmup: int = option(0, ge=0)
    lr_cooldown: int = option(0, ge=0, help="linear LR decay to zero over the last iterations")
    losses: dict[str, Any] = option(
        dict(PAPER_FINETUNE_LOSSES),
        help="fine-tuning losses {name: options}, like the top-level losses section (default: the paper's, "
             "DDPM 1e-4 + output and block distillation 1.0; name: null drops one)")
    micro_batch: int | None = option(None, ge=1, help="overrides engine.micro_batch for this stage")
    grad_accum: int | None = option(None, ge=1, help="overrides engine.grad_accum for this stage")


def finetune_expert(ctx: PruningContext, i: int, routing: dict[str, Any], cfg: FinetuneStageConfig, *,
                    round_to: int | None) -> dict[str, Any]:
    """Expert ``i``: pruned to its routing mask, fine-tuned, saved under ``artifacts/mixture/``."""
    import torch

    from prunekit.capture import capture_block_outputs
    from prunekit.denoisers import physically_prune, round_mask, save_expert
    from prunekit.engine import micro_batch_indices, train
    from prunekit.losses import TEACHER, LossInputs, losses_need
    from prunekit.mixture import expert_dir
    from prunekit.objectives import add_noise
    from prunekit.shards import RowPrefetcher

    run, seed, prunable, unet = ctx.run, ctx.seed, ctx.prunable, ctx.denoiser
    conditioning = ctx.conditioning
    table = read_routing(ctx)
    mask = torch.tensor(table["masks"][i], dtype=torch.bool)
    if round_to:
        mask = round_mask(prunable, mask, round_to)
    expert = physically_prune(prunable, mask)
    members = [k for k, e in enumerate(table["expert_of_sample"]) if e == i]
    info: dict[str, Any] = {"expert": i, "samples": len(members),
                            "macs_ratio": routing["macs_ratio"][i], "finetune_steps": 0}
    if members and cfg.iters > 0:
        losses = {k: run.registry.build("loss", {"name": k, **v}) for k, v in cfg.losses.items() if v is not None}
        needs = losses_need(losses)
        want_teacher = bool(needs & TEACHER)
        want_blocks = bool(needs & {"block_outputs", "teacher_block_outputs"})
        engine_cfg = stage_engine_config(run, cfg)
        scheduler = ctx.pipeline.scheduler
        expert.requires_grad_(True)
        expert.train()

        reader = RowPrefetcher(ctx.encoded, ["latents", *conditioning.columns], lambda index: [
            members[k] for k in micro_batch_indices(len(members), engine_cfg.micro_batch, index, seed + i)])

        def batch_fn(index: int) -> dict[str, Any]:
            rows = reader.rows(index)
            return diffusion_batch(rows["latents"], {name: rows[name] for name in conditioning.columns}, scheduler)

        def loss_fn(model: Any, batch: dict[str, Any], step: int) -> tuple[Any, dict[str, float]]:
            x0, cond, noise, t = batch["latents"], batch["cond"], batch["noise"], batch["timesteps"]
            noisy = add_noise(scheduler, x0, noise, t)
            teacher, teacher_blocks = None, []
            if want_teacher:
                with torch.no_grad(), capture_block_outputs(unet, want_blocks) as teacher_blocks:
                    teacher = conditioning.call(unet, noisy, t, cond)
            with capture_block_outputs(model, want_blocks) as blocks:
                pred = conditioning.call(model, noisy, t, cond)
            inputs = LossInputs(pred=pred, noise=noise, latents=x0, timesteps=t, scheduler=scheduler,
                                teacher_pred=teacher, block_outputs=blocks, teacher_block_outputs=teacher_blocks)
            parts = {k: loss(inputs) for k, loss in losses.items()}
            return sum(parts.values()), {f"loss_{k}": float(v.detach()) for k, v in parts.items()}

        with run.progress(f"fine-tune expert {i}", cfg.iters) as advance:
            result = train(expert, loss_fn, batch_fn, cfg=engine_cfg, lr=cfg.lr, steps=cfg.iters,
                           warmup_steps=cfg.lr_warmup, cooldown_steps=cfg.lr_cooldown,
                           ckpt_dir=run.checkpoint_dir(f"finetune_expert_{i}"),
                           seed=seed + 7919 * (i + 1), name=f"finetune_expert_{i}",
                           on_step=lambda s, rec: advance(1, loss=rec["loss"]), prefetch=reader.prefetch)
        reader.close()
        expert.load_state_dict(result.state_dict)
        run.on_main(lambda: run_files.write_history(run, f"finetune_expert_{i}", result.history))
        info.update(finetune_steps=cfg.iters, final_loss=history_tail_mean(result.history, "loss"),
                    **result.timing())
    folder = expert_dir(run_files.mixture_dir(run), i)
    run.on_main(lambda: save_expert(expert.eval(), mask, folder, base_config=unet.config,
                                    depth=prunable.inventory.depth, round_to=round_to,
                                    metadata={"expert": i, "samples": len(members)}, overwrite=True))
    info["path"] = str(folder.relative_to(run_files.mixture_dir(run)))
    return info
