"""Memory and disk of the data path as the dataset grows: synthetic COCO-format data with N captions
(N = 2,000 and 20,000 by default) is encoded into shards and an APTP run trains a few steps on it
(tiny SD-shaped pipeline, CPU). Each N runs in a fresh process; printed per N: peak RSS of that
process, disk bytes per encoded sample, encode samples/s; then the ratio of peak RSS at the largest N
to the smallest (target: within 10 %), and what the shards of SD 2.1 take for COCO and CC3M.

    python benchmarks/data_scale.py [--captions 2000,20000] [--workdir DIR]
"""

from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
SMOKE = REPO / "recipes" / "tiny" / "aptp_smoke.yaml"
CAPTIONS_PER_IMAGE = 5
# SD 2.1 at the paper's 256 px training resolution: latents 4x32x32, text states 77x1024, MiniLM z 384.
SD21_FLOATS = {"latents": 4 * 32 * 32, "text": 77 * 1024}
SD21_Z = 384
DATASETS = {"COCO 2014 train (414,113 captions)": 414_113, "CC3M train (3.3 M pairs)": 3_300_000}


def write_data(n_captions: int, work: Path) -> dict[str, object]:
    from prunekit_plugins.datasets.synthetic_coco import write_synthetic_coco

    return write_synthetic_coco(work / "data", images=n_captions // CAPTIONS_PER_IMAGE,
                                captions_per_image=CAPTIONS_PER_IMAGE, resolution=32)


def child(n_captions: int, work: Path) -> dict[str, object]:
    """One measurement, in this (fresh) process: encode and train on data written beforehand (by
    another process, so writing it is not measured), report peak RSS."""
    from prunekit.recipe import load_recipe
    from prunekit.registry import get_registry
    from prunekit.runner import execute

    data = {"root": str(work / "data" / "images"), "annotations": str(work / "data" / "captions.json")}
    overrides = ["dataset.name=coco", f"dataset.root={data['root']}", f"dataset.annotations={data['annotations']}",
                 "dataset.resolution=32", "method.encode.batch_size=64", "method.encode.shard_size=1024",
                 "method.prune.warmup_iters=3", "method.prune.iters=5", "method.finetune.iters=2",
                 "eval.samples_per_expert=0", "engine.checkpoint_every=1000"]
    start = time.perf_counter()
    execute(load_recipe(SMOKE, overrides), get_registry(), output=work / "run", console_log=False)
    stages = json.loads((work / "run" / "stages.json").read_text())
    enc = stages["encode"]
    return {"captions": n_captions, "samples": enc["samples"], "peak_rss_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "bytes_per_sample": enc["bytes_per_sample"], "encode_samples_per_s": enc["samples"] / enc["seconds"],
            "prune_s_per_step": stages["prune"]["seconds_per_step"], "run_seconds": time.perf_counter() - start}


def text_encoder_seconds_per_sample(batch: int = 16, repeats: int = 2) -> float:
    """Cost of recomputing SD 2.1 text states from token ids (the alternative to storing them), on this CPU."""
    import torch
    from transformers import CLIPTextConfig, CLIPTextModel

    from prunekit.shaped import sd21_text_encoder_config

    torch.manual_seed(0)
    model = CLIPTextModel(CLIPTextConfig(**sd21_text_encoder_config())).eval()
    ids = torch.randint(0, 49408, (batch, 77))
    with torch.no_grad():
        model(ids)
        start = time.perf_counter()
        for _ in range(repeats):
            model(ids)
    return (time.perf_counter() - start) / (repeats * batch)


H100_BF16_PEAK = 989e12  # dense bf16 FLOP/s of an H100 SXM
ASSUMED_UTILISATION = 0.4


def encode_flops_per_sample() -> tuple[float, float]:
    """FLOPs of SD 2.1's VAE encoder on one 256 px image and of its text encoder on one caption
    (counted on the meta device: shapes only, nothing computed)."""
    import torch
    from diffusers import AutoencoderKL
    from torch.utils.flop_counter import FlopCounterMode
    from transformers import CLIPTextConfig, CLIPTextModel

    from prunekit.shaped import sd21_text_encoder_config, sd_vae_config

    with torch.device("meta"):
        vae, text = AutoencoderKL(**sd_vae_config()), CLIPTextModel(CLIPTextConfig(**sd21_text_encoder_config()))
    counts = []
    for fn in (lambda: vae.encode(torch.empty(1, 3, 256, 256, device="meta")),
               lambda: text(torch.zeros(1, 77, dtype=torch.long, device="meta"))):
        with FlopCounterMode(display=False) as counter:
            fn()
        counts.append(float(counter.get_total_flops()))
    return counts[0], counts[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--captions", default="2000,20000")
    parser.add_argument("--workdir", default=None)
    parser.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
    args = parser.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="prunekit-data-scale-"))
    if args.child is not None:
        print(json.dumps(child(args.child, work)))
        return 0
    rows = []
    for n in (int(x) for x in args.captions.split(",")):
        write_data(n, work / f"n{n}")
        out = subprocess.run([sys.executable, __file__, "--child", str(n), "--workdir", str(work / f"n{n}")],
                             capture_output=True, text=True, cwd=REPO)
        if out.returncode != 0:
            print(out.stderr[-3000:], file=sys.stderr)
            return 1
        rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
        r = rows[-1]
        print(f"N={r['captions']:>6}: peak RSS {r['peak_rss_mib']:7.1f} MiB, {r['bytes_per_sample']:8.1f} B/sample on "
              f"disk, encode {r['encode_samples_per_s']:7.1f} samples/s, prune {r['prune_s_per_step']:.3f} s/step, "
              f"run {r['run_seconds']:.0f} s", flush=True)
    ratio = rows[-1]["peak_rss_mib"] / rows[0]["peak_rss_mib"]
    print(f"peak RSS ratio N={rows[-1]['captions']} / N={rows[0]['captions']}: {ratio:.3f} (target <= 1.10)")

    stored = 2 * sum(SD21_FLOATS.values()) + 4 * SD21_Z + 8  # fp16 latents and text, fp32 z, int64 index
    tokens = 2 * SD21_FLOATS["latents"] + 4 * SD21_Z + 8 + 4 * 77
    recompute = text_encoder_seconds_per_sample()
    print(f"SD 2.1 shards: {stored / 1e3:.1f} kB/sample with text states stored (fp16); {tokens / 1e3:.1f} kB/sample "
          f"with token ids instead, at {recompute * 1e3:.0f} ms/sample of text-encoder recompute on this CPU")
    vae_flops, text_flops = encode_flops_per_sample()
    per_sample = (vae_flops + text_flops) / (ASSUMED_UTILISATION * H100_BF16_PEAK)
    print(f"SD 2.1 encode: {vae_flops / 1e9:.0f} GFLOPs (VAE, 256 px) + {text_flops / 1e9:.0f} GFLOPs (text) per sample; "
          f"estimated {per_sample * 1e3:.2f} ms/sample on one H100 at {ASSUMED_UTILISATION:.0%} of its bf16 peak")
    for name, n in DATASETS.items():
        print(f"  {name}: {stored * n / 1e9:.0f} GB stored states, {tokens * n / 1e9:.1f} GB with token ids; "
              f"encode ~{per_sample * n / 60:.0f} GPU-minutes")
    return 0 if ratio <= 1.10 else 1


if __name__ == "__main__":
    raise SystemExit(main())
