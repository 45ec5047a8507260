"""Throughput of a prompt-routed mixture vs one static pruned model of the same mean MACs.

Builds an SD-shaped pipeline (random weights), prunes it into experts at different MAC ratios
(random unit scores, the MAC model picks the threshold), routes 64 prompts with an APTP router
(sentence-transformer embeddings, random predictor), and times, interleaved:

* the mixture: ``PromptRoutedPipeline`` (route, group by expert, one batched pipeline call per group);
* a static expert whose MACs equal the mixture's routed mean, on the same prompts.

It also times the router per prompt (prompt encoder + predictor + nearest code) against one step
of the SD 2.1 U-Net (512 px, batch 1) that a deployed mixture would serve.

    python benchmarks/mixture_throughput.py [--config small|sd21] [--steps 4] [--repeats 3] [--device cpu]
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

RATIOS = (0.5, 0.65, 0.8, 0.95)


def unet_config(name: str) -> dict:
    from prunekit.tiny import tiny_unet_config
    from prunekit.unet import sd21_unet_config

    if name == "sd21":
        return sd21_unet_config()
    cfg = tiny_unet_config(block_out_channels=(64, 128, 256), cross_attention_dim=64, attention_head_dim=4)
    cfg.update(norm_num_groups=32)
    return cfg


def mask_for_ratio(prunable, mac_model, ratio: float, generator: torch.Generator) -> torch.Tensor:
    """Keep the highest random-score units until the MAC model says ``ratio`` (bisection on a threshold)."""
    scores = torch.rand(prunable.num_units, generator=generator)
    scores[prunable.depth_indices] = 2.0  # keep depth: width pruning only, for a clean comparison
    lo, hi = 0.0, 1.0
    for _ in range(40):
        mid = (lo + hi) / 2
        if float(mac_model.ratio((scores > mid).float())) > ratio:
            lo = mid
        else:
            hi = mid
    mask = (scores > lo).float()
    for group in prunable.groups:  # never empty a layer
        if mask[group].sum() == 0:
            mask[group[scores[group].argmax()]] = 1
    return mask


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", choices=("small", "sd21"), default="small")
    parser.add_argument("--steps", type=int, default=4)
    parser.add_argument("--prompts", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--resolution", type=int, default=64, help="pixels (latent = resolution / VAE factor)")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=0)
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    from diffusers import UNet2DConditionModel

    from prunekit.pipeline import PromptRoutedPipeline
    from prunekit.registry import get_registry
    from prunekit.runner import quiet_libraries
    from prunekit.tiny import build_tiny_pipeline
    from prunekit.unet import count_macs, make_prunable, physically_prune

    quiet_libraries()
    torch.manual_seed(0)
    cfg = unet_config(args.config)
    base = build_tiny_pipeline(0)
    base.text_encoder = type(base.text_encoder)(
        type(base.text_encoder.config)(**{**base.text_encoder.config.to_dict(), "hidden_size": cfg["cross_attention_dim"]})
    )
    base.unet = UNet2DConditionModel(**cfg)
    base = base.to(args.device)
    latent = args.resolution // 2  # the tiny VAE downsamples by 2
    text_len = base.tokenizer.model_max_length
    prunable = make_prunable(base.unet)
    mac_model = prunable.mac_model(height=latent, width=latent, text_len=text_len)
    g = torch.Generator().manual_seed(0)
    masks = [mask_for_ratio(prunable, mac_model, r, g) for r in RATIOS]
    experts = [physically_prune(prunable, m).eval().to(args.device) for m in masks]
    expert_ratios = [float(mac_model.ratio(m)) for m in masks]

    registry = get_registry()
    encoder = registry.build("prompt_encoder", {"name": "sentence_transformer"})
    router = registry.build("router", {"name": "aptp", "num_codes": len(RATIOS)},
                            embed_dim=encoder.dim, num_units=prunable.num_units)
    colors = ["red", "green", "blue", "yellow", "purple", "orange", "black", "white"]
    things = ["cat", "dog", "car", "house", "tree", "person", "street sign with text", "bowl of fruit"]
    prompts = [f"a photo of a {colors[i % 8]} {things[(i // 8) % 8]}" for i in range(args.prompts)]
    with torch.no_grad():  # spread the codes over the prompts, as training would
        router.predictor.weight.normal_(0, 1.0, generator=g)
        router.init_codes(router.embed(encoder.encode(prompts)), generator=g)
    prunable.restore()
    mixture = PromptRoutedPipeline(base, encoder, router, experts)
    routed = mixture.route(prompts)
    shares = [routed.count(i) / len(prompts) for i in range(len(RATIOS))]
    mean_ratio = sum(s * r for s, r in zip(shares, expert_ratios))
    static_mask = mask_for_ratio(prunable, mac_model, mean_ratio, g)
    static = PromptRoutedPipeline(base, encoder, router, [physically_prune(base.unet, static_mask)
                                                          .eval().to(args.device)] * len(RATIOS))
    static_ratio = float(mac_model.ratio(static_mask))
    kwargs = dict(num_inference_steps=args.steps, guidance_scale=7.5, output_type="np",
                  height=args.resolution, width=args.resolution)

    def timed(fn) -> float:
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if args.device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - start

    mix_t, static_t = [], []
    timed(lambda: mixture(prompts[:8], **kwargs))  # warm-up
    for _ in range(args.repeats):
        mix_t.append(timed(lambda: mixture(prompts, **kwargs)))
        static_t.append(timed(lambda: static._pipes[0](prompts, **kwargs)))
    route_t = [timed(lambda p=p: mixture.route([p])) for p in prompts[:16]]
    encoder._cache.clear()
    route_cold = [timed(lambda p=p: mixture.route([p + " (new)"])) for p in prompts[:16]]
    # Router overhead is judged against one step of the U-Net it would serve: SD 2.1 at 512 px.
    sd21 = UNet2DConditionModel(**unet_config("sd21")).eval().to(args.device)
    x = torch.randn(1, 4, 64, 64, device=args.device)
    c = torch.randn(1, 77, 1024, device=args.device)
    with torch.no_grad():
        step_t = [timed(lambda m=sd21: m(x, torch.tensor([500], device=args.device), c)) for _ in range(3)]
    del sd21

    mix, stat = statistics.median(mix_t), statistics.median(static_t)
    print(f"config={args.config} device={args.device} prompts={len(prompts)} steps={args.steps} "
          f"resolution={args.resolution} dense U-Net {count_macs(base.unet, None, height=latent, width=latent, text_len=text_len) / 1e9:.2f} GMACs")
    print("expert MAC ratios:", [round(r, 3) for r in expert_ratios], "shares:", [round(s, 3) for s in shares])
    print(f"{'model':<34}{'MACs ratio':>11}{'median s':>10}{'prompts/s':>11}")
    print(f"{'mixture (routed, grouped)':<34}{mean_ratio:>11.3f}{mix:>10.2f}{len(prompts) / mix:>11.2f}")
    print(f"{'static expert, same mean MACs':<34}{static_ratio:>11.3f}{stat:>10.2f}{len(prompts) / stat:>11.2f}")
    print(f"throughput ratio mixture/static: {stat / mix:.3f}  (target >= 0.9)")
    step = statistics.median(step_t)
    print(f"router per prompt: {statistics.median(route_t) * 1e3:.2f} ms cached, {statistics.median(route_cold) * 1e3:.2f} ms "
          f"uncached; one SD 2.1 U-Net step (512 px, batch 1): {step * 1e3:.1f} ms -> overhead {statistics.median(route_cold) / step:.2%} "
          f"(target < 1%)")


if __name__ == "__main__":
    main()
