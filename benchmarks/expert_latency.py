"""Latency of physically pruned SD 2.1-shaped U-Nets against their MACs.

For each MAC target (fraction of the dense MACs) a mask is chosen with the MAC model: every width layer
(ResNet groups, attention heads, FFN groups) keeps about the same fraction of its units (randomly
dithered per layer), which units being drawn at random, channel counts rounded up to multiples of ``--round-to``; depth units are kept. The
fraction is found by bisection so the rounded mask lands on the target. Dense and pruned forwards are
then timed in interleaved order; the latency ratio is the median of the per-pair ratios. Also reports the overhead of the gated forward
(hooks + gate multiplies, hard dense gates) over the stock forward.

    .venv/bin/python benchmarks/expert_latency.py --repeats 3
    .venv/bin/python benchmarks/expert_latency.py --device cuda --dtype fp16 --repeats 30

Weights are random (no download). Target: latency ratio / MAC ratio <= 1.05.
"""

from __future__ import annotations

import argparse
import math
import statistics
import time
from collections.abc import Callable
from functools import partial

import torch

from prunekit.shaped import build_sd21_shaped_unet
from prunekit.unet import PrunableUNet, make_prunable, physically_prune, round_mask
from prunekit.unet.macs import MacModel, example_inputs


def uniform_mask(prunable: PrunableUNet, fraction: float, scores: torch.Tensor, round_to: int) -> torch.Tensor:
    keep = torch.zeros(prunable.num_units, dtype=torch.bool)
    keep[prunable.depth_indices] = True
    for layer in prunable.inventory.width_layers:
        # Per-layer dither (the layer's first score): layers step at different fractions, so the MAC
        # ratio moves in small steps and the bisection can land close to the target.
        k = min(layer.count, max(1, math.floor(fraction * layer.count + float(scores[layer.start]))))
        top = scores[layer.start:layer.stop].topk(k).indices
        keep[layer.start + top] = True
    return round_mask(prunable, keep, round_to, scores=scores) if round_to > 1 else keep


def mask_for_target(prunable: PrunableUNet, mac_model: MacModel, target: float, scores: torch.Tensor,
                    round_to: int) -> torch.Tensor:
    lo, hi = 0.0, 1.0
    for _ in range(30):
        mid = (lo + hi) / 2
        if float(mac_model.ratio(uniform_mask(prunable, mid, scores, round_to).float())) > target:
            hi = mid
        else:
            lo = mid
    below = uniform_mask(prunable, lo, scores, round_to)
    above = uniform_mask(prunable, hi, scores, round_to)
    gap = [abs(float(mac_model.ratio(m.float())) - target) for m in (below, above)]
    return below if gap[0] <= gap[1] else above


def timer(device: str) -> Callable[[Callable[[], object]], float]:
    def run(fn: Callable[[], object]) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    return run


def interleaved(a: Callable[[], object], b: Callable[[], object], repeats: int, device: str,
                warmup: int) -> tuple[float, float, float]:
    """Median time of ``a``, of ``b``, and median of the per-pair ratios b/a (robust to load drifting)."""
    run = timer(device)
    for _ in range(warmup):
        run(a)
        run(b)
    times_a, times_b = [], []
    for _ in range(repeats):
        times_a.append(run(a))
        times_b.append(run(b))
    ratios = [tb / ta for ta, tb in zip(times_a, times_b)]
    return statistics.median(times_a), statistics.median(times_b), statistics.median(ratios)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=["fp32", "fp16", "bf16"])
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--repeats", type=int, default=3, help="timed forwards per model and target")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--latent", type=int, default=32, help="latent height = width")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--targets", type=float, nargs="+", default=[0.85, 0.66, 0.5])
    parser.add_argument("--round-to", type=int, default=8)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--skip-gating-overhead", action="store_true")
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[args.dtype]
    start = time.perf_counter()
    unet = build_sd21_shaped_unet(args.device, dtype, args.seed)
    prunable = make_prunable(unet)
    mac_model = prunable.mac_model(height=args.latent, width=args.latent, text_len=77)
    inputs, kwargs = example_inputs(unet, height=args.latent, width=args.latent, batch=args.batch,
                                    generator=torch.Generator().manual_seed(args.seed))
    print(f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} latent={args.latent} "
          f"batch={args.batch} repeats={args.repeats} round_to={args.round_to} "
          f"dense={mac_model.dense / 1e9:.2f} GMACs (setup {time.perf_counter() - start:.0f} s)")
    scores = torch.rand(prunable.num_units, generator=torch.Generator().manual_seed(args.seed + 1))

    rows = []
    overhead_line = ""
    with torch.no_grad():
        for target in args.targets:
            mask = mask_for_target(prunable, mac_model, target, scores, args.round_to)
            pruned = physically_prune(prunable, mask).eval()
            mac_ratio = float(mac_model.ratio(mask.float()))
            dense_t, pruned_t, latency_ratio = interleaved(partial(unet, *inputs, **kwargs),
                                                           partial(pruned, *inputs, **kwargs),
                                                           args.repeats, args.device, args.warmup)
            rows.append((target, mac_ratio, dense_t, pruned_t, latency_ratio))
            print(f"target {target:.2f}: MACs ratio {mac_ratio:.3f}  latency {pruned_t * 1e3:.1f} vs "
                  f"{dense_t * 1e3:.1f} ms, ratio {latency_ratio:.3f}  latency/MACs {latency_ratio / mac_ratio:.3f}",
                  flush=True)
            del pruned
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()
        if not args.skip_gating_overhead:
            gates = torch.ones(prunable.num_units, device=args.device)
            stock_t, gated_t, overhead = interleaved(lambda: unet(*inputs, **kwargs),
                                                     lambda: prunable(*inputs, gates=gates, **kwargs),
                                                     args.repeats, args.device, args.warmup)
            overhead_line = (f"gated forward overhead (dense hard gates): {overhead - 1:+.1%} "
                             f"(stock {stock_t * 1e3:.1f} ms, gated {gated_t * 1e3:.1f} ms)")

    print("\n| MAC target | MACs ratio | dense ms | pruned ms | latency ratio | latency / MACs |")
    print("|---|---|---|---|---|---|")
    for target, mac_ratio, dense_t, pruned_t, latency_ratio in rows:
        print(f"| {target:.2f} | {mac_ratio:.3f} | {dense_t * 1e3:.1f} | {pruned_t * 1e3:.1f} | "
              f"{latency_ratio:.3f} | {latency_ratio / mac_ratio:.3f} |")
    if overhead_line:
        print(f"\n{overhead_line}")
    print(f"\ntotal {time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
