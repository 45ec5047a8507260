"""Prepared GPU check of the latency budget: does a staircase latency table predict experts on a GPU?

For each setting (fp16; 64x64 and 96x96 latents; batch 1 and 16) on the SD 2.1-shaped U-Net with
random weights: profile a staircase table (``--tile`` channels per step, ``prunekit.unet.latency``),
then draw random experts (as ``benchmarks/latency_table.py`` does), physically prune them, time each in
alternation with the dense U-Net, and print predicted vs measured latency ratios next to the MAC
ratio (which docs/benchmarks.md shows to be a poor predictor on an H100). The narrowed modules are
built once and reused by every setting. Tables and rows go to ``--out`` (default ``$OUT`` or a temp
folder); a wall-clock budget (``--budget-s``, default 450 s) skips what would not fit in 8 minutes.

    python3 benchmarks/gpu_latency_check.py                    # on a machine with a CUDA GPU
    python3 benchmarks/gpu_latency_check.py --settings 96x1 --experts 3 --repeats 10

Needs torch with CUDA and diffusers importable (on a machine without network, put a diffusers source
tree on PYTHONPATH). Target, as on the CPU: |predicted / measured - 1| <= 5 % for every expert.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settings", nargs="+", default=["64x1", "64x16", "96x1", "96x16"],
                        help="LATENTxBATCH settings, in order")
    parser.add_argument("--dtype", default="fp16", choices=["fp16", "bf16", "fp32"])
    parser.add_argument("--tile", type=int, default=64, help="staircase step in channels (0: a linear table)")
    parser.add_argument("--points", type=int, default=5, help="widths per layer of a linear table (--tile 0)")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--experts", type=int, default=5)
    parser.add_argument("--budget-s", type=float, default=450.0, help="stop starting settings after this")
    parser.add_argument("--out", default=None)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda", help="cpu: a dry run of the script itself (tiny settings)")
    args = parser.parse_args()

    import torch
    from latency_table import random_expert

    from prunekit.shaped import build_sd21_shaped_unet
    from prunekit.unet import make_prunable, physically_prune
    from prunekit.unet.latency import DTYPES, LatencyModel, fit_scale, interleaved_ratio, profile_latency
    from prunekit.unet.macs import example_inputs

    if args.device.startswith("cuda") and not torch.cuda.is_available():
        print("no CUDA device: this check is for a GPU machine (--device cpu: a dry run)", file=sys.stderr)
        return 2
    cuda = args.device.startswith("cuda")
    start = time.perf_counter()
    out = Path(args.out or os.environ.get("OUT") or tempfile.mkdtemp()) / "gpu-latency"
    out.mkdir(parents=True, exist_ok=True)
    device = torch.device(args.device)
    unet = build_sd21_shaped_unet(args.device, DTYPES[args.dtype], args.seed)
    prunable = make_prunable(unet)
    print(f"{torch.cuda.get_device_name(device) if cuda else 'cpu'}, torch {torch.__version__}, {args.dtype}, tile {args.tile}, "
          f"setup {time.perf_counter() - start:.0f} s", flush=True)
    cache: dict = {}
    summary = []
    for setting in args.settings:
        elapsed = time.perf_counter() - start
        if elapsed > args.budget_s:
            print(f"skipping {setting} and later: {elapsed:.0f} s used of --budget-s {args.budget_s:.0f}")
            break
        latent, batch = (int(x) for x in setting.split("x"))
        t0 = time.perf_counter()
        table = profile_latency(unet, height=latent, width=latent, text_len=77, batch=batch, points=args.points,
                                tile=args.tile or None, repeats=args.repeats, warmup=args.warmup, cache=cache,
                                log=lambda m: print("  " + m, flush=True))
        table.save(out / f"table_{args.dtype}_{latent}_b{batch}.json")
        model = LatencyModel(table, prunable.inventory)
        calibration = fit_scale(table.checks)  # what --calibrate would fit: reported next to the plain table
        macs = prunable.mac_model(height=latent, width=latent, text_len=77)
        inputs, kwargs = example_inputs(unet, height=latent, width=latent, batch=batch,
                                        generator=torch.Generator().manual_seed(args.seed))
        generator = torch.Generator().manual_seed(args.seed + 1)
        rows = []
        with torch.inference_mode():
            for i in range(args.experts):
                keep = 0.35 + 0.55 * i / max(1, args.experts - 1)
                mask = random_expert(prunable, keep, 0.2, 0.2, generator)
                expert = physically_prune(prunable, mask).eval()
                dense_s, expert_s, measured = interleaved_ratio(
                    lambda a=inputs, kw=kwargs: unet(*a, **kw), lambda e=expert, a=inputs, kw=kwargs: e(*a, **kw),
                    repeats=args.repeats, warmup=args.warmup, device=device)
                predicted = float(model.ratio(mask.double()))
                mac_ratio = float(macs.ratio(mask.double()))
                calibrated = 1 - calibration * (1 - predicted)
                rows.append({"keep": keep, "macs_ratio": mac_ratio, "predicted": predicted, "measured": measured,
                             "error": predicted / measured - 1, "calibrated_error": calibrated / measured - 1,
                             "dense_ms": dense_s * 1e3,
                             "expert_ms": expert_s * 1e3})
                del expert
                if cuda:
                    torch.cuda.empty_cache()
        print(f"\n{args.dtype}, {latent}x{latent}, batch {batch}: dense {table.dense_s * 1e3:.2f} ms, calibration "
              f"factor {calibration:.3f}, profile {table.profile_seconds:.0f} s, setting {time.perf_counter() - t0:.0f} s")
        print("| keep level | MACs ratio | predicted latency ratio | measured latency ratio | error | error calibrated "
              "| dense ms | expert ms |")
        print("|---|---|---|---|---|---|---|---|")
        for r in rows:
            print(f"| {r['keep']:.2f} | {r['macs_ratio']:.3f} | {r['predicted']:.3f} | {r['measured']:.3f} "
                  f"| {r['error']:+.1%} | {r['calibrated_error']:+.1%} | {r['dense_ms']:.2f} | {r['expert_ms']:.2f} |")
        worst = max(abs(r["error"]) for r in rows)
        print(f"worst |error| {worst:.1%}; table self-check: " + ", ".join(
            f"{c['fraction']:.2f}: {c['predicted_ratio']:.3f} vs {c['measured_ratio']:.3f}"
            for c in table.checks), flush=True)
        summary.append({"setting": setting, "dense_s": table.dense_s, "calibration": calibration, "rows": rows,
                        "worst_error": worst})
        (out / "summary.json").write_text(json.dumps(summary, indent=1))
    print(f"\ntotal {time.perf_counter() - start:.0f} s; tables and summary.json in {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
