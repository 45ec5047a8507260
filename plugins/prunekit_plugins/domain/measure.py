"""Measure the domain's reference figures (docs/domain.md): the classifier on real images, the
autoencoder's reconstructions, the teacher's samples, and FID anchors.

    python -m prunekit_plugins.domain.measure --prompts 160 --steps 25 --guidance 7.5 --out teacher.json

Image i of the teacher uses ``torch.Generator().manual_seed(seed + i)``, as prunekit's evaluation does.
"""

from __future__ import annotations

import argparse
import json
import time
from typing import Any


def generate(pipeline: Any, prompts: list[str], *, steps: int, guidance: float, seed: int, batch: int = 16) -> Any:
    """uint8 (N, 3, H, W) teacher samples with the pipeline's own scheduler (PNDM; the DiT teacher's
    flow-matching Euler)."""
    import torch

    from prunekit.conditioning import call_kwargs

    images = []
    for start in range(0, len(prompts), batch):
        chunk = prompts[start : start + batch]
        generators = [torch.Generator().manual_seed(seed + start + k) for k in range(len(chunk))]
        out = pipeline(chunk, num_inference_steps=steps, guidance_scale=guidance, output_type="pt", generator=generators,
                       **call_kwargs(pipeline))
        images.append((out.images.clamp(0, 1) * 255).round().to(torch.uint8))
    return torch.cat(images)


def measure(prompts: int, steps: int, guidance: float, seed: int, dataset_seed: int, teacher: str | None) -> dict[str, Any]:
    import torch

    from prunekit_plugins.domain.classifier import load_classifier
    from prunekit_plugins.domain.dataset import EmbeddedDomain, EmbeddedDomainConfig
    from prunekit_plugins.domain.evaluate import alignment_scores, domain_fid
    from prunekit_plugins.domain.teacher import EmbeddedConfig, build_embedded

    classifier = load_classifier()
    data = EmbeddedDomain(EmbeddedDomainConfig(size=prompts, seed=dataset_seed))
    other = EmbeddedDomain(EmbeddedDomainConfig(size=prompts, seed=dataset_seed + 1))
    real, real_other = data.uint8_images(), other.uint8_images()
    noise = torch.randint(0, 256, real.shape, dtype=torch.uint8, generator=torch.Generator().manual_seed(0))
    result: dict[str, Any] = {
        "prompts": prompts, "dataset_seed": dataset_seed,
        "real": alignment_scores(classifier, real, attributes=data.attributes),
        "fid_real_vs_real": domain_fid(classifier, real, real_other),
        "fid_real_vs_noise": domain_fid(classifier, real, noise),
    }
    pipeline = build_embedded(EmbeddedConfig(path=teacher))
    with torch.no_grad():
        x = real.float() / 127.5 - 1
        recon = pipeline.vae.decode(pipeline.vae.encode(x).latent_dist.mean).sample.clamp(-1, 1)
    recon8 = ((recon + 1) * 127.5).round().to(torch.uint8)
    mse = float(((recon8.float() - real.float()) / 255).pow(2).mean())
    result["autoencoder"] = {**alignment_scores(classifier, recon8, attributes=data.attributes),
                             "psnr": -10 * torch.log10(torch.tensor(mse)).item(),
                             "fid": domain_fid(classifier, real, recon8)}
    start = time.perf_counter()
    samples = generate(pipeline, data.prompts, steps=steps, guidance=guidance, seed=seed)
    seconds = time.perf_counter() - start
    result["teacher"] = {"scheduler": type(pipeline.scheduler).__name__, "steps": steps, "guidance": guidance,
                         "seed": seed, "seconds_per_image": seconds / prompts,
                         **alignment_scores(classifier, samples, attributes=data.attributes),
                         "fid": domain_fid(classifier, real, samples)}
    return result


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--prompts", type=int, default=160)
    parser.add_argument("--steps", type=int, default=25)
    parser.add_argument("--guidance", type=float, default=7.5)
    parser.add_argument("--seed", type=int, default=0, help="image i uses seed + i")
    parser.add_argument("--dataset-seed", type=int, default=2024, help="seed of the evaluation prompts and drawings")
    parser.add_argument("--teacher", default=None, help="diffusers folder (default: the shipped teacher)")
    parser.add_argument("--out", default=None, help="write the figures to this JSON file too")
    args = parser.parse_args(argv)
    result = measure(args.prompts, args.steps, args.guidance, args.seed, args.dataset_seed, args.teacher)
    text = json.dumps(result, indent=2)
    print(text)
    if args.out:
        with open(args.out, "w") as f:
            f.write(text + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
