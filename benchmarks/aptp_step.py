"""Time of one APTP pruning step on the tiny config, measured through the real code path.

Runs the ``aptp`` method's joint pruning stage (router + codes, Sinkhorn OT, gumbel-sigmoid gates,
gated U-Net forward/backward, teacher forward, DDPM + output/block distillation + resource +
contrastive losses, DeepSpeed optimizer step) twice with different iteration counts on the tiny
SD-shaped U-Net (block_out_channels (32, 64), layers_per_block 2), batch 8, 8x8 latents, and
reports the per-step time from the difference, so start-up costs cancel out.

    python benchmarks/aptp_step.py [--threads 2] [--steps 20 80]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def stage_seconds(steps: int, threads: int, extra: list[str]) -> float:
    from prunekit.recipe import load_recipe
    from prunekit.registry import get_registry
    from prunekit.runner import execute

    overrides = [
        f"method.prune.iters={steps}", "method.prune.warmup_iters=0", "method.finetune.iters=0",
        "dataset.size=64", "dataset.resolution=16", "engine.micro_batch=8", "engine.zero_stage=0",
        f"engine.threads={threads}", "engine.checkpoint_every=100000", *extra,
    ]
    recipe = load_recipe(REPO / "recipes" / "tiny" / "aptp_smoke.yaml", overrides)
    with tempfile.TemporaryDirectory() as tmp:
        _, metrics = execute(recipe, get_registry(), output=Path(tmp) / "run", console_log=False)
    return float(metrics["prune"]["joint"]["seconds"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--steps", type=int, nargs=2, default=(20, 80))
    parser.add_argument("--repeats", type=int, default=3)
    args = parser.parse_args()

    import torch

    torch.set_num_threads(args.threads)
    short, long = args.steps
    rows = []
    for label, extra in [("full APTP loss", []), ("without distillation", ["losses.distill_output=null", "losses.distill_block=null"])]:
        per_step = []
        for _ in range(args.repeats):
            t_short = stage_seconds(short, args.threads, extra)
            t_long = stage_seconds(long, args.threads, extra)
            per_step.append((t_long - t_short) / (long - short))
        rows.append((label, statistics.median(per_step), min(per_step)))
    print(f"APTP pruning step, tiny U-Net (32, 64), batch 8, 8x8 latents, {args.threads} threads")
    print(f"{'loss':<24} {'median s/step':>14} {'min s/step':>11} {'vs paper 0.11 s':>16}")
    for label, med, low in rows:
        print(f"{label:<24} {med:>14.4f} {low:>11.4f} {med / 0.11:>15.2f}x")


if __name__ == "__main__":
    start = time.perf_counter()
    main()
    print(f"(benchmark took {time.perf_counter() - start:.0f} s)")
