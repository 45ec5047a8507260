"""Time post-training pruning of an SD 2.1-shaped pipeline (random weights, built from config).

U-Net: SD 2.1's config (865 M parameters); text encoder: CLIP ViT-H/14's text tower (hidden 1024,
23 layers, 16 heads, MLP 4096; 340 M). The VAE is a 4-level stand-in (same ×8 latent scale,
a few channels) because calibration stops at latents, and the tokenizer is prunekit's tiny
character-level CLIP tokenizer padded to 77 tokens. Each method starts from the same dense weights
(rebuilt from the seed) and prunes both components as the post-training driver does — text encoder
47.5 %, U-Net 35 % by default — reporting seconds per component and the realised sparsity.

    .venv/bin/python benchmarks/posttrain_speed.py --methods magnitude wanda \\
        [--prompts 1 --steps 2 --resolution 256] [--device cpu|cuda] [--json out.json]
"""

from __future__ import annotations

import argparse
import json
import time
from types import SimpleNamespace
from typing import Any

import torch
from prunekit_plugins.posttrain.config import CalibrationConfig, TextEncoderSparsity, UNetSparsity
from prunekit_plugins.posttrain.layers import select_layers
from prunekit_plugins.posttrain.magnitude import MagnitudeRule
from prunekit_plugins.posttrain.method import COMPONENTS, layer_report, prune_pipeline_component
from prunekit_plugins.posttrain.owl import OwlRule
from prunekit_plugins.posttrain.sparsegpt import SparseGPTRule
from prunekit_plugins.posttrain.wanda import WandaRule

from prunekit.tiny import build_tiny_tokenizer

SD21_UNET = dict(
    sample_size=96,
    in_channels=4,
    out_channels=4,
    layers_per_block=2,
    block_out_channels=(320, 640, 1280, 1280),
    down_block_types=("CrossAttnDownBlock2D",) * 3 + ("DownBlock2D",),
    up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * 3,
    attention_head_dim=(5, 10, 20, 20),
    cross_attention_dim=1024,
    use_linear_projection=True,
    norm_num_groups=32,
)
VIT_H_TEXT = dict(
    hidden_size=1024,
    intermediate_size=4096,
    num_hidden_layers=23,
    num_attention_heads=16,
    max_position_embeddings=77,
    hidden_act="gelu",
    projection_dim=1024,
)
RULES = {
    "magnitude": lambda: MagnitudeRule("layer"),
    "magnitude_global": lambda: MagnitudeRule("global"),
    "wanda": lambda: WandaRule("row"),
    "sparsegpt": lambda: SparseGPTRule(128, 0.01),
    "owl": lambda: OwlRule("wanda", 5.0, 0.08),
}


def build_pipeline(seed: int, device: str) -> Any:
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer(max_length=77)
    unet = UNet2DConditionModel(**SD21_UNET)
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=49408,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
            **VIT_H_TEXT,
        )
    )
    vae = AutoencoderKL(
        block_out_channels=(8, 8, 8, 8),
        down_block_types=("DownEncoderBlock2D",) * 4,
        up_block_types=("UpDecoderBlock2D",) * 4,
        latent_channels=4,
        norm_num_groups=4,
        layers_per_block=1,
    )
    scheduler = DDIMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        prediction_type="v_prediction",
    )
    pipe = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    pipe.set_progress_bar_config(disable=True)
    return pipe.to(device)


def synchronize(device: str) -> None:
    if device.startswith("cuda"):
        torch.cuda.synchronize()


def bench_method(method: str, args: argparse.Namespace) -> dict[str, Any]:
    pipe = build_pipeline(args.seed, args.device)
    prompts = [f"a photo of a {w} in a garden" for w in ("cat", "dog", "horse", "bird", "chair", "boat", "car", "tree")]
    config = SimpleNamespace(
        calibration=CalibrationConfig(
            prompts=args.prompts, steps=args.steps, guidance_scale=7.5, seed=0, batch_size=args.prompts,
            height=args.resolution, width=args.resolution,
        ),
        sequential=args.sequential if args.sequential is not None else method == "sparsegpt",
    )
    specs = {"text_encoder": TextEncoderSparsity(sparsity=args.text_sparsity), "unet": UNetSparsity(sparsity=args.unet_sparsity)}
    row: dict[str, Any] = {"method": method, "sequential": config.sequential}
    if args.device.startswith("cuda"):
        torch.cuda.reset_peak_memory_stats()
    for component in COMPONENTS:
        rule = RULES[method]()
        synchronize(args.device)
        start = time.perf_counter()
        result = prune_pipeline_component(
            pipe, component, specs[component], rule, prompts=prompts[: args.prompts], config=config
        )
        synchronize(args.device)
        seconds = time.perf_counter() - start
        report = layer_report(select_layers(getattr(pipe, component), specs[component].exclude))
        row[component] = {
            "seconds": seconds,
            "passes": result.passes,
            "sparsity": report["sparsity"],
            "prunable_params": report["prunable_params"],
        }
    if args.device.startswith("cuda"):
        row["peak_gpu_gib"] = torch.cuda.max_memory_allocated() / 2**30
    del pipe
    return row


def unet_forward_seconds(args: argparse.Namespace) -> float:
    """One CFG-batch U-Net forward at the calibration resolution, for scale."""
    pipe = build_pipeline(args.seed, args.device)
    latent = args.resolution // 8
    x = torch.randn(2, 4, latent, latent, device=args.device)
    ctx = torch.randn(2, 77, 1024, device=args.device)
    with torch.no_grad():
        pipe.unet(x, 10, ctx)
        synchronize(args.device)
        start = time.perf_counter()
        pipe.unet(x, 10, ctx)
        synchronize(args.device)
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--methods", nargs="+", default=["magnitude", "wanda"], choices=sorted(RULES))
    parser.add_argument("--text-sparsity", type=float, default=0.475)
    parser.add_argument("--unet-sparsity", type=float, default=0.35)
    parser.add_argument("--prompts", type=int, default=1, help="calibration prompts")
    parser.add_argument("--steps", type=int, default=2, help="denoising steps per calibration prompt")
    parser.add_argument("--resolution", type=int, default=256, help="calibration image side (latents: /8)")
    parser.add_argument("--sequential", action=argparse.BooleanOptionalAction, default=None,
                        help="default: on for sparsegpt, off otherwise (the methods' defaults)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--threads", type=int, default=0, help="torch CPU threads (0: torch's default)")
    parser.add_argument("--json", help="also write the rows as JSON here")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    where = torch.cuda.get_device_name() if args.device.startswith("cuda") else f"CPU, {torch.get_num_threads()} threads"
    forward = unet_forward_seconds(args)
    print(f"device: {where}; calibration {args.prompts} prompt(s) x {args.steps} steps at {args.resolution}px "
          f"(CFG); one CFG U-Net forward: {forward:.2f} s")
    print("| method | sequential | text encoder s (passes) | U-Net s (passes) | text enc. sparsity | U-Net sparsity "
          "| peak GPU GiB |")
    print("|---|---|---|---|---|---|---|")
    rows = []
    for method in args.methods:  # each row is printed (and saved) as soon as it is measured
        r = bench_method(method, args)
        rows.append(r)
        te, un = r["text_encoder"], r["unet"]
        peak = f"{r['peak_gpu_gib']:.1f}" if "peak_gpu_gib" in r else "-"
        print(f"| {r['method']} | {r['sequential']} | {te['seconds']:.1f} ({te['passes']}) "
              f"| {un['seconds']:.1f} ({un['passes']}) | {te['sparsity']:.4f} | {un['sparsity']:.4f} | {peak} |",
              flush=True)
        if args.json:
            with open(args.json, "w") as f:
                json.dump({"device": where, "unet_forward_s": forward, "args": vars(args), "rows": rows}, f, indent=2)


if __name__ == "__main__":
    main()
