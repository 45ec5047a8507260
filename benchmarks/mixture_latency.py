"""Measured latency of the experts a run exported, against its teacher and its budget's prediction.

For a finished run directory (a mixture under ``artifacts/mixture``): times every expert U-Net in
alternation with the teacher U-Net (the recipe's model, rebuilt), at the latent size, text length and
batch of the run's latency table (``artifacts/latency_table.json``; without one: the run's encoded
latents, batch 1), and prints each expert's measured latency ratio next to the ratio the run's budget
charged it (``metrics.json`` ``routing``), and the routed mean (weighted by the training prompts each
expert serves).

    .venv/bin/python benchmarks/mixture_latency.py runs/aptp_tiny_latency --threads 1 --repeats 21

Target of a ``budget: {name: latency, target: T}`` run: routed mean measured ratio within T +- 0.05.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from prunekit.unet.latency import interleaved_ratio
from prunekit.unet.macs import example_inputs, measure_macs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("run_dir")
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--repeats", type=int, default=21)
    parser.add_argument("--warmup", type=int, default=3)
    args = parser.parse_args()

    from prunekit import run_files
    from prunekit.console import quiet_libraries
    from prunekit.latency_table import LatencyTable
    from prunekit.pipeline import PromptRoutedPipeline
    from prunekit.recipe import load_recipe
    from prunekit.registry import get_registry

    quiet_libraries()
    if args.threads:
        torch.set_num_threads(args.threads)
    run = Path(args.run_dir)
    recipe = load_recipe(run / "recipe.yaml")
    teacher_pipe = get_registry().build("model", recipe.data["model"]).to("cpu")
    teacher = teacher_pipe.unet.float().eval()
    mixture = PromptRoutedPipeline.from_pretrained(run_files.mixture_dir(run), base=teacher_pipe, device="cpu",
                                                   dtype=torch.float32)
    table_file = run_files.artifacts_dir(run) / run_files.LATENCY_TABLE
    if table_file.is_file():
        table = LatencyTable.load(table_file)
        height, width, text_len, batch = table.height, table.width, table.text_len, table.batch
    else:
        height, width = (int(x) for x in json.loads((run / "stages.json").read_text())["encode"]["result"]
                         ["latent_shape"][-2:])
        text_len, batch = int(teacher_pipe.tokenizer.model_max_length), 1
    metrics = json.loads((run / "metrics.json").read_text())
    routing = metrics["routing"]
    counts, charged = routing["counts"], routing["macs_ratio"]
    inputs, kwargs = example_inputs(teacher, height=height, width=width, text_len=text_len, batch=batch,
                                    generator=torch.Generator().manual_seed(0))
    dense_macs = measure_macs(teacher, height=height, width=width, text_len=text_len)
    print(f"{run}: budget {recipe.data['budget']}, {len(mixture.experts)} experts, {height}x{width} latent, "
          f"{text_len} tokens, batch {batch}, {torch.get_num_threads()} threads", flush=True)
    start = time.perf_counter()
    rows = []
    with torch.inference_mode():
        for i, expert in enumerate(mixture.experts):
            expert = expert.float().eval()
            dense_s, expert_s, measured = interleaved_ratio(
                lambda: teacher(*inputs, **kwargs), lambda e=expert: e(*inputs, **kwargs),
                repeats=args.repeats, warmup=args.warmup, device=torch.device("cpu"))
            macs = measure_macs(expert, height=height, width=width, text_len=text_len) / dense_macs
            rows.append((i, counts[i], charged[i], measured, macs, dense_s, expert_s))
            print(f"expert {i}: share {counts[i]}, charged {charged[i]:.3f}, measured {measured:.3f}, MACs {macs:.3f}",
                  flush=True)
    total = max(1, sum(counts))
    print("\n| expert | prompts | budget's ratio | measured latency ratio | MACs ratio | teacher ms | expert ms |")
    print("|---|---|---|---|---|---|---|")
    for i, n, c, m, macs, d, e in rows:
        print(f"| {i} | {n} | {c:.3f} | {m:.3f} | {macs:.3f} | {d * 1e3:.2f} | {e * 1e3:.2f} |")
    mean_charged = sum(r[1] * r[2] for r in rows) / total
    mean_measured = sum(r[1] * r[3] for r in rows) / total
    mean_macs = sum(r[1] * r[4] for r in rows) / total
    print(f"| routed mean | {total} | {mean_charged:.3f} | {mean_measured:.3f} | {mean_macs:.3f} | | |")
    print(f"\nmeasured routed mean latency ratio {mean_measured:.3f} (budget target {recipe.data['budget']['target']}); "
          f"{time.perf_counter() - start:.0f} s")


if __name__ == "__main__":
    main()
