"""The paper-scale training paths on one GPU: aptp, norm and dense_finetune on an SD 2.1-shaped
pipeline (random weights, published configs), bf16, ZeRO-2 and ZeRO-3, 256 px, micro-batch 64 for
the pruning step. Prints seconds per training step and peak GPU memory of each; every run must
complete. Run through ``benchmarks/gpu_check.sh`` (budget: under 8 minutes on one H100).

    python benchmarks/gpu_check.py [--workdir DIR] [--only aptp,norm,dense_finetune] [--stages 2,3]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

COMMON = ["engine.precision=bf16", "seed=0", "dataset.size=256", "dataset.resolution=256",
          "method.encode.batch_size=32", "engine.checkpoint_every=1000"]
METHODS = {
    # 3 + 5 pruning steps at micro-batch 64 (teacher + gated student, distillation), 3 fine-tuning
    # steps per expert at 16, two experts; the report's sample grid at 2 sampler steps.
    "aptp": ["recipes/tiny/aptp_smoke.yaml", "router.num_codes=2", "method.prune.warmup_iters=3",
             "method.prune.iters=5", "method.prune.micro_batch=64", "method.finetune.iters=3",
             "method.finetune.micro_batch=16", "eval.samples_per_expert=1", "eval.steps=2"],
    "norm": ["recipes/tiny/norm.yaml", "method.finetune.iters=3", "method.finetune.micro_batch=16",
             "eval.samples_per_expert=1", "eval.steps=2"],
    "dense_finetune": ["recipes/tiny/dense_finetune.yaml", "method.steps=5", "method.warmup_steps=1",
                       "engine.micro_batch=16"],
}


def timings(run_dir: Path) -> dict[str, object]:
    stages = json.loads((run_dir / "stages.json").read_text())
    out: dict[str, object] = {}
    for name, record in stages.items():
        if isinstance(record, dict) and record.get("seconds_per_step") is not None:
            out[name] = (record["seconds_per_step"], record.get("peak_memory_gib"))
    return out


def command(method: str, stage: int, model: Path, out: Path, verb: str = "run") -> list[str]:
    recipe, *overrides = METHODS[method]
    where = ["--output", str(out), "-q"] if verb == "run" else []
    return [sys.executable, "-m", "prunekit", verb, recipe, *where, "model.name=diffusers_sd",
            f"model.path={model}", "model.dtype=float32", f"engine.zero_stage={stage}", *COMMON, *overrides]


def validate(methods: list[str], stages: list[int]) -> int:
    bad = 0
    for method in methods:
        for stage in stages:
            proc = subprocess.run(command(method, stage, Path("/nonexistent"), Path("-"), verb="validate"),
                                  cwd=REPO, capture_output=True, text=True)
            print(f"{method} ZeRO-{stage}: {'valid' if proc.returncode == 0 else proc.stderr.strip()}")
            bad += proc.returncode != 0
    return 1 if bad else 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--only", default=",".join(METHODS))
    parser.add_argument("--stages", default="2,3")
    parser.add_argument("--validate", action="store_true", help="only validate every run's recipe (no GPU needed)")
    args = parser.parse_args()
    if args.validate:
        return validate(args.only.split(","), [int(s) for s in args.stages.split(",")])
    import torch

    if not torch.cuda.is_available():
        print("gpu_check: no CUDA device visible", file=sys.stderr)
        return 2
    work = Path(args.workdir or tempfile.mkdtemp(prefix="prunekit-gpu-check-"))
    model = work / "sd21_shaped_256"
    start = time.perf_counter()
    if not (model / "model_index.json").is_file():
        from prunekit.shaped import save_sd21_shaped_pipeline

        save_sd21_shaped_pipeline(model, sample_size=32, dtype="float16")
    print(f"device: {torch.cuda.get_device_name(0)}; SD 2.1-shaped pipeline at {model} "
          f"({time.perf_counter() - start:.0f} s)", flush=True)
    rows, failed = [], []
    for method in args.only.split(","):
        for stage in (int(s) for s in args.stages.split(",")):
            out = work / f"{method}_zero{stage}"
            cmd = command(method, stage, model, out)
            begun = time.perf_counter()
            proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
            wall = time.perf_counter() - begun
            if proc.returncode != 0:
                failed.append(f"{method} zero{stage}")
                print(f"FAILED {method} ZeRO-{stage} ({wall:.0f} s):\n{proc.stderr[-3000:]}", flush=True)
                continue
            encode = json.loads((out / "stages.json").read_text()).get("encode", {})
            if encode.get("seconds"):
                print(f"{method:15s} ZeRO-{stage} encode {encode['samples'] / encode['seconds']:8.1f} samples/s "
                      f"({encode['bytes_per_sample'] / 1e3:.1f} kB/sample on disk)", flush=True)
            for name, (sps, mem) in timings(out).items():
                rows.append((method, stage, name, sps, mem, wall))
                print(f"{method:15s} ZeRO-{stage} {name:22s} {sps:8.3f} s/step  peak {mem or 0:6.2f} GiB"
                      f"  (run {wall:.0f} s)", flush=True)
    print("\n| method | ZeRO | stage | s/step | peak GPU memory (GiB) | whole run (s) |")
    print("|---|---|---|---|---|---|")
    for method, stage, name, sps, mem, wall in rows:
        print(f"| {method} | {stage} | {name} | {sps:.3f} | {mem or 0:.2f} | {wall:.0f} |")
    print(f"\ntotal {time.perf_counter() - start:.0f} s; failed: {', '.join(failed) or 'none'}")
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
