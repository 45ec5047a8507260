"""Datasets of captioned images, and the cache of their latents and text embeddings.

A ``dataset`` plugin builds an object with ``prompts: list[str]``, ``__len__`` and
``__getitem__(i) -> {"prompt": str, "image": FloatTensor[3, H, W] in [-1, 1]}`` (prompt-only
datasets may omit images). Training encodes every image and prompt once (VAE latents, text
embeddings) instead of on every fetch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from collections.abc import Sequence
from typing import Any, Protocol, runtime_checkable

import torch


@runtime_checkable
class CaptionedDataset(Protocol):
    prompts: list[str]

    def __len__(self) -> int: ...

    def __getitem__(self, index: int) -> dict[str, Any]: ...


@dataclass
class EncodedDataset:
    """Latents (scaled by the VAE factor) and text embeddings, row-aligned with ``prompts``."""

    latents: torch.Tensor
    text_embeddings: torch.Tensor
    prompts: list[str]

    def save(self, path: str | Path) -> None:
        import json

        from safetensors.torch import save_file

        save_file(
            {"latents": self.latents.contiguous(), "text_embeddings": self.text_embeddings.contiguous()},
            str(path),
            metadata={"prompts": json.dumps(self.prompts)},
        )

    @classmethod
    def load(cls, path: str | Path) -> EncodedDataset:
        import json

        from safetensors import safe_open

        with safe_open(str(path), framework="pt") as f:
            prompts = json.loads(f.metadata()["prompts"])
            return cls(f.get_tensor("latents"), f.get_tensor("text_embeddings"), prompts)


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


@torch.no_grad()
def encode_dataset(
    pipeline: Any, dataset: CaptionedDataset, *, batch_size: int = 32, progress: Any = None,
    indices: Sequence[int] | None = None,
) -> EncodedDataset:
    """Encode every image once with the VAE (deterministic: the posterior mean) and every prompt
    (or only the rows ``indices``, in that order)."""
    vae = pipeline.vae
    scale = float(getattr(vae.config, "scaling_factor", 0.18215))
    rows = list(range(len(dataset))) if indices is None else list(indices)
    latents = []
    for start in range(0, len(rows), batch_size):
        items = [dataset[i] for i in rows[start : start + batch_size]]
        images = torch.stack([it["image"] for it in items]).to(vae.device, vae.dtype)
        latents.append((vae.encode(images).latent_dist.mean * scale).float().cpu())
        if progress is not None:
            progress(len(items))
    all_prompts = dataset.prompts
    prompts = [all_prompts[i] for i in rows]
    if not latents:
        return EncodedDataset(torch.zeros(0), encode_prompts(pipeline, prompts) if prompts else torch.zeros(0), prompts)
    return EncodedDataset(torch.cat(latents), encode_prompts(pipeline, prompts), prompts)


def encode_dataset_sharded(
    pipeline: Any, dataset: CaptionedDataset, *, batch_size: int = 32, progress: Any = None,
    prompt_encoder: Any = None,
) -> tuple[EncodedDataset, torch.Tensor | None]:
    """:func:`encode_dataset` split over the ranks and gathered, in dataset order, on every rank;
    with ``prompt_encoder`` also the prompt embeddings (router input) of every row."""
    from prunekit import distributed

    world = distributed.world_size()
    rows = distributed.shard(len(dataset))
    advance = None if progress is None else (lambda n: progress(n * world))
    local = encode_dataset(pipeline, dataset, batch_size=batch_size, progress=advance, indices=rows)
    z = prompt_encoder.encode(local.prompts) if prompt_encoder is not None else None
    if world == 1:
        return local, z
    parts = [p for p in distributed.all_gather((local.latents, local.text_embeddings, local.prompts, z)) if p[2]]
    encoded = EncodedDataset(torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]),
                             [prompt for p in parts for prompt in p[2]])
    return encoded, None if z is None else torch.cat([p[3] for p in parts])
