"""SparseGPT vs Wanda vs magnitude on one real-shaped SD layer: reconstruction error and time.

Layers: a 1280×1280 Linear (an SD 2.1 attention projection at the lowest resolution) and a
320→320 3×3 Conv2d (a first-level ResNet conv), pruned as a matrix over its unfolded inputs
(2880 columns). Calibration: ``--samples`` inputs (a sample is ``--tokens`` token rows for the
Linear, one ``--size``² feature map for the conv) with correlated features, a few loud channels
and, for the conv, spatial smoothness — the structure real activations have and i.i.d. noise lacks.
Error is ``‖WX − ŴX‖² / ‖WX‖²`` on the calibration inputs and on as many held-out ones.

    .venv/bin/python benchmarks/sparsegpt_layer.py [--samples 128] [--device cpu|cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from prunekit_plugins.posttrain.layers import PrunableLayer

from prunekit.calibration import InputHessian, InputNorms, input_rows
from prunekit.ops import sparsegpt_prune
from prunekit.ops.masks import layer_prune_mask, magnitude_scores, nm_prune_mask, row_prune_mask, wanda_scores


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn: Callable[[], torch.Tensor], device: torch.device) -> tuple[torch.Tensor, float]:
    synchronize(device)
    start = time.perf_counter()
    out = fn()
    synchronize(device)
    return out, time.perf_counter() - start


def mixing(channels: int, g: torch.Generator, rank: int = 64) -> torch.Tensor:
    """A low-rank channel-mixing matrix: features share structure, as real activations do."""
    return torch.randn(rank, channels, generator=g) / rank**0.5


def linear_inputs(samples: int, tokens: int, mix: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    x = torch.randn(samples * tokens, mix.shape[0], generator=g) @ mix
    x += 0.2 * torch.randn(x.shape, generator=g)
    x[:, :8] *= 10  # outlier features
    return x


def conv_inputs(samples: int, size: int, mix: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    low = torch.randn(samples, mix.shape[0], size // 4, size // 4, generator=g)
    smooth = F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)
    x = torch.einsum("brhw,rc->bchw", smooth, mix)
    x += 0.2 * torch.randn(x.shape, generator=g)
    x[:, :8] *= 10
    return x


def error(w: torch.Tensor, pruned: torch.Tensor, rows: torch.Tensor) -> float:
    ref = rows @ w.T
    return float(((ref - rows @ pruned.T) ** 2).sum() / (ref**2).sum())


def bench_layer(name: str, module: torch.nn.Module, calib: torch.Tensor, held: torch.Tensor, device) -> list[dict]:
    module = module.to(device)
    calib, held = calib.to(device), held.to(device)
    layer = PrunableLayer(name, module)  # the plugin's view: convs as (out, kh·kw·in)
    w = layer.matrix()
    order = layer.column_order()
    cal_rows = torch.cat(list(input_rows(module, calib)))[:, order]
    held_rows = torch.cat(list(input_rows(module, held)))[:, order]

    def accumulate(stat_type):
        stat = stat_type(w.shape[1], device)
        for rows in input_rows(module, calib):
            stat.update(rows)
        return layer.reorder_statistic(stat.result())

    hessian, t_hessian = timed(lambda: accumulate(InputHessian), device)
    norms, t_norms = timed(lambda: accumulate(InputNorms), device)
    def prune(method: str, nm: bool) -> torch.Tensor:
        if method == "sparsegpt":
            return sparsegpt_prune(w, hessian, 0.0 if nm else 0.5, prune_n=2 if nm else 0, prune_m=4 if nm else 0)
        scores = magnitude_scores(w) if method == "magnitude" else wanda_scores(w, norms)
        if nm:
            return w.masked_fill(nm_prune_mask(scores, 2, 4), 0)
        select = layer_prune_mask if method == "magnitude" else row_prune_mask
        return w.masked_fill(select(scores, 0.5), 0)

    statistic_seconds = {"magnitude": 0.0, "wanda": t_norms, "sparsegpt": t_hessian}
    results = []
    for pattern in ("50%", "2:4"):
        for method in ("magnitude", "wanda", "sparsegpt"):
            prune(method, pattern == "2:4")  # warm-up (first CUDA kernels, allocator)
            pruned, t_prune = timed(lambda m=method, p=pattern: prune(m, p == "2:4"), device)
            results.append(
                {
                    "layer": name,
                    "pattern": pattern,
                    "method": method,
                    "sparsity": float((pruned == 0).float().mean()),
                    "error_calibration": error(w, pruned, cal_rows),
                    "error_held_out": error(w, pruned, held_rows),
                    "statistic_s": statistic_seconds[method],
                    "prune_s": t_prune,
                }
            )
    return results


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=128)
    parser.add_argument("--tokens", type=int, default=64, help="token rows per Linear sample")
    parser.add_argument("--size", type=int, default=16, help="feature-map side per conv sample")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    g = torch.Generator().manual_seed(args.seed)
    torch.manual_seed(args.seed)
    linear = torch.nn.Linear(1280, 1280)
    conv = torch.nn.Conv2d(320, 320, 3, padding=1)
    rows = []
    # calibration and held-out inputs share one distribution (the same channel mixing)
    mix = mixing(1280, g)
    calib, held = (linear_inputs(args.samples, args.tokens, mix, g) for _ in range(2))
    rows += bench_layer("linear 1280x1280", linear, calib, held, device)
    mix = mixing(320, g)
    calib, held = (conv_inputs(args.samples, args.size, mix, g) for _ in range(2))
    rows += bench_layer("conv 320->320 3x3", conv, calib, held, device)
    name = torch.cuda.get_device_name() if device.type == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"device: {name}; {args.samples} calibration samples")
    print("| layer | pattern | method | sparsity | rel. error (calib) | rel. error (held-out) | statistic s | prune s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(
            f"| {r['layer']} | {r['pattern']} | {r['method']} | {r['sparsity']:.3f} | {r['error_calibration']:.4f} "
            f"| {r['error_held_out']:.4f} | {r['statistic_s']:.3f} | {r['prune_s']:.3f} |"
        )
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"device": name, "samples": args.samples, "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
