"""Datasets of captioned images, and the cache of their latents and text embeddings.

A ``dataset`` plugin builds an object with ``prompts: list[str]``, ``__len__`` and
``__getitem__(i) -> {"prompt": str, "image": FloatTensor[3, H, W] in [-1, 1]}`` (prompt-only
datasets may omit images). A sample that cannot be read raises (a missing file, an undecodable
image) or has an empty caption: the encode stage skips and counts it. Training encodes every image
and prompt once (VAE latents, text states, router inputs) into shards (:mod:`prunekit.shards`)
instead of on every fetch.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, Protocol, runtime_checkable

import torch

from prunekit.encode_config import EncodeConfig


@runtime_checkable
class CaptionedDataset(Protocol):
    prompts: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


@torch.no_grad()
def encode_prompts(pipeline: Any, prompts: list[str], batch_size: int = 64) -> torch.Tensor:
    """Text-encoder hidden states exactly as the pipeline conditions its U-Net."""
    tok = pipeline.tokenizer
    out = []
    for start in range(0, len(prompts), batch_size):
        ids = tok(
            prompts[start : start + batch_size],
            padding="max_length",
            max_length=tok.model_max_length,
            truncation=True,
            return_tensors="pt",
        ).input_ids.to(pipeline.text_encoder.device)
        out.append(pipeline.text_encoder(ids)[0].float().cpu())
    return torch.cat(out)


def sd_batch_encoder(pipeline: Any, prompt_encoder: Any = None) -> Callable[[list[dict[str, Any]]], dict[str, torch.Tensor]]:
    """Encode dataset items as a Stable Diffusion pipeline conditions its U-Net: VAE posterior-mean
    latents (scaled), text-encoder states, and, given a ``prompt_encoder``, router inputs ``z``."""
    vae = pipeline.vae
    scale = float(getattr(vae.config, "scaling_factor", 0.18215))

    @torch.no_grad()
    def encode(items: list[dict[str, Any]]) -> dict[str, torch.Tensor]:
        prompts = [str(it["prompt"]) for it in items]
        images = torch.stack([it["image"] for it in items]).to(vae.device, vae.dtype)
        out = {"latents": (vae.encode(images).latent_dist.mean * scale).float().cpu(),
               "text": encode_prompts(pipeline, prompts)}
        if prompt_encoder is not None:
            out["z"] = prompt_encoder.encode(prompts).float().cpu()
        return out

    return encode


def encode_stage(run: Any, pipeline: Any, config: EncodeConfig, *, prompt_encoder: Any = None,
                 folder: str = "encoded") -> dict[str, Any]:
    """The ``encode`` stage of a training method: the recipe's dataset into shards under
    ``artifacts/<folder>`` (split over ranks, resumable); unreadable samples are skipped, counted in
    ``metrics.json`` under ``data``, and stop the run beyond ``config.max_skipped_fraction``."""
    import time

    from prunekit.errors import PrunekitError
    from prunekit.shards import encode_to_shards

    dataset = run.build("dataset")
    start = time.perf_counter()
    with run.progress("encode dataset", len(dataset)) as advance:
        index = encode_to_shards(run.artifact(folder), dataset, sd_batch_encoder(pipeline, prompt_encoder),
                                 shard_size=config.shard_size, batch_size=config.batch_size, dtype=config.dtype,
                                 progress=advance, log=run.log)
    # What the dataset rejected while indexing (bad metadata lines, files missing at listing time)
    # counts with what could not be loaded.
    counts = dict(index["skipped"])
    for reason, n in (getattr(dataset, "rejected", None) or {}).items():
        counts[reason] = counts.get(reason, 0) + int(n)
    examples = [*getattr(dataset, "rejected_examples", [])[:5], *(e["detail"] for e in index["skipped_examples"])]
    skipped = sum(counts.values())
    rows = index["dataset_rows"] + skipped - sum(index["skipped"].values())
    summary = {"samples": index["samples"], "dataset_rows": rows, "skipped": counts, "skipped_examples": examples[:5]}
    run.save_metrics(data=summary)
    if skipped:
        run.log.warning("encode: skipped %d of %d samples (%s); first: %s", skipped, rows,
                        ", ".join(f"{k} {v}" for k, v in sorted(counts.items())), "; ".join(examples[:3]))
    if index["samples"] == 0 or (rows and skipped / rows > config.max_skipped_fraction):
        raise PrunekitError(
            f"encode: {skipped} of {rows} samples could not be used ({', '.join(f'{k} {v}' for k, v in sorted(counts.items()))}), "
            f"more than method.encode.max_skipped_fraction={config.max_skipped_fraction}; first: "
            f"{examples[0] if examples else 'none'}")
    seconds = time.perf_counter() - start
    disk = sum((run.artifact(folder) / s["file"]).stat().st_size for s in index["shards"])
    return {**summary, "latent_shape": index["shapes"]["latents"], "text_shape": index["shapes"]["text"],
            "shards": len(index["shards"]), "storage_dtype": index["storage_dtype"],
            "seconds": round(seconds, 3), "bytes_per_sample": round(disk / max(1, index["samples"]), 1)}


def open_encoded(run: Any, folder: str = "encoded") -> Any:
    """The encoded dataset of a run (rows read lazily from its shards)."""
    from prunekit.shards import EncodedShards

    return EncodedShards(run.artifact(folder))
