"""The eval split: which rows are drawn, and their prompts, real images and attributes."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any


def select_indices(total: int, count: int, seed: int) -> list[int]:
    """``count`` distinct rows out of ``total`` (all when ``count`` is 0 or too large), drawn with
    ``seed`` and sorted, so the subset spans the whole dataset rather than its first rows."""
    import random

    if count == 0 or count >= total:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), count))


def _complete(attributes: list[dict[str, Any] | None]) -> list[dict[str, Any]] | None:
    """The attributes when every row has them, else None."""
    present = [a for a in attributes if a is not None]
    return present if len(present) == len(attributes) else None


def eval_data_source(dataset: Any, indices: Sequence[int]) -> tuple[list[str], Any, list[dict[str, Any]] | None]:
    """Prompts, real images (an image source that decodes them chunk by chunk, or None for a
    prompt-only dataset) and attributes of ``indices``: what :func:`load_eval_data` returns, without
    holding the images."""
    from prunekit.eval_images import DatasetImages

    indices = list(indices)
    if not indices:
        return [], None, None
    first = dataset[indices[0]]
    if "image" not in first or not hasattr(dataset, "prompts"):
        return load_eval_data(dataset, indices)
    prompts = [str(dataset.prompts[i]) for i in indices]
    known = getattr(dataset, "attributes", None)
    attributes: list[dict[str, Any] | None] = [
        dict(known[i]) if known is not None and isinstance(known[i], Mapping) else None for i in indices]
    if known is None and isinstance(first.get("attributes"), Mapping):
        attributes = [dict(dataset[i]["attributes"]) for i in indices]
    return prompts, DatasetImages(dataset, indices), _complete(attributes)


def load_eval_data(dataset: Any, indices: Sequence[int]) -> tuple[list[str], Any, list[dict[str, Any]] | None]:
    """Prompts, real images (uint8, or None for a prompt-only dataset) and attributes of ``indices``."""
    import torch

    prompts: list[str] = []
    images: list[torch.Tensor] = []
    attributes: list[dict[str, Any] | None] = []
    known = getattr(dataset, "attributes", None)
    for i in indices:
        item = dataset[i]
        prompts.append(str(item["prompt"]))
        if "image" in item:
            images.append(((item["image"].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
        attrs = item.get("attributes")
        if attrs is None and known is not None and isinstance(known[i], Mapping):
            attrs = known[i]
        attributes.append(dict(attrs) if isinstance(attrs, Mapping) else None)
    real = torch.stack(images) if images and len(images) == len(prompts) else None
    return prompts, real, _complete(attributes)
