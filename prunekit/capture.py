"""Capturing intermediate outputs of a stock denoiser with forward hooks (for block distillation)."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import torch


def unet_blocks(unet: Any) -> list[torch.nn.Module]:
    """The down blocks, the mid block and the up blocks, in forward order; for a transformer
    denoiser (PixArt, SD3, Flux), its transformer blocks (Flux: then its single blocks)."""
    if not hasattr(unet, "down_blocks"):
        return [*unet.transformer_blocks, *getattr(unet, "single_transformer_blocks", [])]
    blocks = list(unet.down_blocks)
    if getattr(unet, "mid_block", None) is not None:
        blocks.append(unet.mid_block)
    return blocks + list(unet.up_blocks)


@contextmanager
def capture_block_outputs(unet: Any, enabled: bool = True) -> Iterator[list[torch.Tensor]]:
    """Yield a list that fills with each block's hidden-state output during the next forward.

    Down blocks return ``(hidden, residuals)``; only ``hidden`` is kept. Joint-attention blocks (SD3,
    Flux) return ``(text, image)``; the image stream is kept (SD3's last block ends the text stream).
    Pruning keeps every block's output shape, so student and teacher lists align one to one.
    """
    outputs: list[torch.Tensor] = []
    if not enabled:
        yield outputs
        return

    pick = 0 if hasattr(unet, "down_blocks") else -1

    def hook(module: torch.nn.Module, args: Any, output: Any) -> None:
        outputs.append(output[pick] if isinstance(output, tuple) else output)

    handles = [block.register_forward_hook(hook) for block in unet_blocks(unet)]
    try:
        yield outputs
    finally:
        for handle in handles:
            handle.remove()
