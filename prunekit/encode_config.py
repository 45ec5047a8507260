"""The ``encode:`` section of a training method. Kept apart from ``data.py`` so validation never imports torch."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prunekit.config import option


@dataclass
class EncodeConfig:
    """The ``encode:`` options of a training method: how the dataset is cached before training."""

    batch_size: int = option(32, ge=1, help="images per VAE / text-encoder call")
    shard_size: int = option(1024, ge=1, help="samples per shard file: the unit of resume and of the split over ranks")
    dtype: Literal["float16", "bfloat16", "float32"] = option(
        "float16", help="storage dtype of latents and text states (prompt embeddings stay float32)")
    max_skipped_fraction: float = option(
        0.01, ge=0, le=1, help="stop when more than this share of the dataset cannot be read")
