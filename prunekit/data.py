"""Datasets of captioned images, and the cache of their latents and text embeddings.

A ``dataset`` plugin builds an object with ``prompts: list[str]``, ``__len__`` and
``__getitem__(i) -> {"prompt": str, "image": FloatTensor[3, H, W] in [-1, 1]}`` (prompt-only
datasets may omit images). Training encodes every image and prompt once (VAE latents, text
embeddings) instead of on every fetch.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
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
    pipeline: Any, dataset: CaptionedDataset, *, batch_size: int = 32, progress: Any = None
) -> EncodedDataset:
    """Encode every image once with the VAE (deterministic: the posterior mean) and every prompt."""
    vae = pipeline.vae
    scale = float(getattr(vae.config, "scaling_factor", 0.18215))
    latents = []
    for start in range(0, len(dataset), batch_size):
        items = [dataset[i] for i in range(start, min(start + batch_size, len(dataset)))]
        images = torch.stack([it["image"] for it in items]).to(vae.device, vae.dtype)
        latents.append((vae.encode(images).latent_dist.mean * scale).float().cpu())
        if progress is not None:
            progress(len(items))
    prompts = list(dataset.prompts)
    return EncodedDataset(torch.cat(latents), encode_prompts(pipeline, prompts), prompts)
