"""Does a measured latency table predict the latency of pruned experts? (SD 2.1-shaped U-Net)

Profiles a latency table of the SD 2.1-shaped U-Net (random weights; ``prunekit.unet.latency``), or
loads one (``--table``), then draws random experts: each has its own keep level, every width layer
keeps that fraction of its units give or take ``--spread`` (random units, at least one), each depth
unit (the paper's layout) is dropped with probability ``--drop``. Each expert is physically pruned
and timed in alternation with the dense U-Net; its latency ratio is the median of the per-pair
ratios, and is compared with the table's predicted ratio (and with its MAC ratio).

    .venv/bin/python benchmarks/latency_table.py --threads 1 --repeats 5 --experts 6
    python3 benchmarks/latency_table.py --device cuda --dtype fp16 --latent 96 --tile 64 --repeats 20

Target (CPU, 1 thread, 32x32 latent): |predicted / measured - 1| <= 5 % for every expert.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import torch

from prunekit.shaped import build_sd21_shaped_unet
from prunekit.unet import make_prunable, physically_prune
from prunekit.unet.latency import (
    DTYPES,
    LatencyModel,
    LatencyTable,
    fit_scale,
    interleaved_ratio,
    profile_latency,
)


def random_expert(prunable, keep: float, spread: float, drop: float, generator: torch.Generator) -> torch.Tensor:
    mask = torch.zeros(prunable.num_units, dtype=torch.bool)
    for layer in prunable.inventory.width_layers:
        fraction = keep + spread * (2 * float(torch.rand((), generator=generator)) - 1)
        k = min(layer.count, max(1, round(fraction * layer.count)))
        units = torch.randperm(layer.count, generator=generator)[:k]
        mask[layer.start + units] = True
    for layer in prunable.inventory.depth_layers:
        mask[layer.start] = bool(torch.rand((), generator=generator) >= drop)
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--dtype", default="fp32", choices=sorted(DTYPES))
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads (default: torch's)")
    parser.add_argument("--latent", type=int, default=32, help="latent height = width")
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (profile and each expert)")
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--points", type=int, default=5, help="measured widths per layer (linear table)")
    parser.add_argument("--tile", type=int, default=None, help="staircase table: a step every TILE channels")
    parser.add_argument("--round-to", type=int, default=None, help="experts' channels rounded up to a multiple")
    parser.add_argument("--experts", type=int, default=6)
    parser.add_argument("--keep", type=float, nargs=2, default=[0.35, 0.9], help="range of the experts' keep levels")
    parser.add_argument("--spread", type=float, default=0.2, help="per-layer keep fraction = level +- spread")
    parser.add_argument("--drop", type=float, default=0.2, help="probability of dropping each depth unit")
    parser.add_argument("--calibrate", action="store_true", help="profile with calibrate=True (table scale)")
    parser.add_argument("--table", help="use this table instead of profiling one")
    parser.add_argument("--save-table", help="write the profiled table here")
    parser.add_argument("--json", help="write the rows here")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.perf_counter()
    dtype = DTYPES[args.dtype]
    unet = build_sd21_shaped_unet(args.device, dtype, args.seed)
    print(f"device={args.device} dtype={args.dtype} threads={torch.get_num_threads()} latent={args.latent} "
          f"batch={args.batch} repeats={args.repeats} points={args.points} tile={args.tile} "
          f"round_to={args.round_to}", flush=True)
    if args.table:
        table = LatencyTable.load(args.table)
        problem = table.mismatch(unet, height=args.latent, width=args.latent, text_len=77)
        if problem:
            sys.exit(f"--table {args.table}: {problem}")
    else:
        table = profile_latency(unet, height=args.latent, width=args.latent, text_len=77, batch=args.batch,
                                points=args.points, tile=args.tile, repeats=args.repeats, warmup=args.warmup,
                                calibrate=args.calibrate, log=lambda m: print("  " + m, flush=True))
        if args.save_table:
            table.save(args.save_table)
    # What --calibrate would have fitted on the table's self-checks (reported, not used).
    calibration = fit_scale(table.checks) if table.checks and table.scale == 1.0 else None
    print(f"table: {table.describe()}, dense {table.dense_s * 1e3:.1f} ms, scale {table.scale:.4f}, "
          f"profiled in {table.profile_seconds:.0f} s; calibration factor from its checks: {calibration}", flush=True)

    prunable = make_prunable(unet)
    model = LatencyModel(table, prunable.inventory, round_to=args.round_to)
    mac_model = prunable.mac_model(height=args.latent, width=args.latent, text_len=77)
    from prunekit.unet.macs import example_inputs

    inputs, kwargs = example_inputs(unet, height=args.latent, width=args.latent, batch=args.batch,
                                    generator=torch.Generator().manual_seed(args.seed))
    generator = torch.Generator().manual_seed(args.seed + 1)
    lo, hi = args.keep
    rows = []
    with torch.inference_mode():
        for i in range(args.experts):
            keep = lo + (hi - lo) * i / max(1, args.experts - 1)
            mask = random_expert(prunable, keep, args.spread, args.drop, generator)
            if args.round_to:
                from prunekit.unet import round_mask

                mask = round_mask(prunable, mask, args.round_to)
            expert = physically_prune(prunable, mask).eval()
            dense_s, expert_s, measured = interleaved_ratio(
                lambda: unet(*inputs, **kwargs), lambda e=expert: e(*inputs, **kwargs),
                repeats=args.repeats, warmup=args.warmup, device=torch.device(args.device))
            predicted = float(model.ratio(mask.double()))
            calibrated = 1 - calibration * (1 - predicted) if calibration else predicted
            macs = float(mac_model.ratio(mask.double()))
            dropped = int((~mask[prunable.depth_indices]).sum())
            row = {"expert": i, "keep": round(keep, 3), "units": int(mask.sum()), "dropped_blocks": dropped,
                   "macs_ratio": macs, "predicted": predicted, "measured": measured,
                   "error": predicted / measured - 1, "calibrated": calibrated,
                   "calibrated_error": calibrated / measured - 1, "dense_ms": dense_s * 1e3, "expert_ms": expert_s * 1e3}
            rows.append(row)
            print(f"expert {i}: keep {keep:.2f}, {dropped} blocks dropped, MACs {macs:.3f}, predicted {predicted:.3f}, "
                  f"measured {measured:.3f} ({row['error']:+.1%}); {expert_s * 1e3:.1f} vs {dense_s * 1e3:.1f} ms",
                  flush=True)
            del expert
            if args.device.startswith("cuda"):
                torch.cuda.empty_cache()

    print("\n| expert | keep level | blocks dropped | MACs ratio | predicted latency ratio | measured latency ratio "
          "| error | error calibrated | dense ms | expert ms |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['expert']} | {r['keep']:.2f} | {r['dropped_blocks']} | {r['macs_ratio']:.3f} | {r['predicted']:.3f} "
              f"| {r['measured']:.3f} | {r['error']:+.1%} | {r['calibrated_error']:+.1%} | {r['dense_ms']:.1f} "
              f"| {r['expert_ms']:.1f} |")
    worst = max(abs(r["error"]) for r in rows)
    mac_worst = max(abs(r["macs_ratio"] / r["measured"] - 1) for r in rows)
    print(f"\nworst |error|: table {worst:.1%}, MACs as a latency predictor {mac_worst:.1%}; "
          f"median |error| {statistics.median(abs(r['error']) for r in rows):.1%}")
    if table.checks:
        print("table self-check (uniform widths): " + ", ".join(
            f"{c['fraction']:.2f}: predicted {c['predicted_ratio']:.3f} measured {c['measured_ratio']:.3f}"
            for c in table.checks))
    print(f"total {time.perf_counter() - start:.0f} s")
    if args.json:
        Path(args.json).write_text(json.dumps({"table": {"dense_s": table.dense_s, "scale": table.scale,
                                                          "describe": table.describe()}, "rows": rows}, indent=1))


if __name__ == "__main__":
    main()
