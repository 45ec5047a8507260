"""Evaluation: what ``metric`` plugins receive.

A metric plugin builds ``metric(batch: EvalBatch) -> dict[str, float]``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any


@dataclass
class EvalBatch:
    """Generated images for a set of prompts, with optional references.

    ``images`` and ``real_images`` are uint8 tensors of shape (N, 3, H, W). ``attributes`` holds the
    ground-truth attributes of each prompt when the dataset knows them (the embedded domain does).
    ``extra`` carries what complexity metrics need (MACs per image, timings, expert ids, ...).
    """

    prompts: list[str]
    images: Any
    real_images: Any = None
    attributes: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)
