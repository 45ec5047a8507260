"""Tiny PixArt / SD3 / Flux transformers, inputs and masks for tests/test_transformer_denoisers.py."""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

LATENT = 8
TEXT_LEN = 5

# 3 blocks, 2 heads x 8, FFN 64 wide; text (24-d) projected to the 16-d stream.
TINY_PIXART: dict[str, Any] = {
    "num_attention_heads": 2, "attention_head_dim": 8, "in_channels": 4, "out_channels": 8, "num_layers": 3,
    "cross_attention_dim": 16, "caption_channels": 24, "sample_size": 8, "patch_size": 2,
    "use_additional_conditions": False,
}
# SD3.5-like: 3 joint blocks (the last one context_pre_only), dual attention in blocks 0-1, RMS q/k norms.
TINY_SD3: dict[str, Any] = {
    "sample_size": 8, "patch_size": 2, "in_channels": 4, "out_channels": 4, "num_layers": 3,
    "attention_head_dim": 8, "num_attention_heads": 4, "joint_attention_dim": 24, "caption_projection_dim": 32,
    "pooled_projection_dim": 16, "pos_embed_max_size": 16, "dual_attention_layers": (0, 1), "qk_norm": "rms_norm",
}
# Flux-dev-like: 2 double-stream and 3 single-stream blocks, guidance embedding, rotary axes 4+6+6 = head_dim.
TINY_FLUX: dict[str, Any] = {
    "patch_size": 1, "in_channels": 16, "num_layers": 2, "num_single_layers": 3, "attention_head_dim": 16,
    "num_attention_heads": 2, "joint_attention_dim": 24, "pooled_projection_dim": 16, "guidance_embeds": True,
    "axes_dims_rope": (4, 6, 6),
}
TINY = {"pixart": TINY_PIXART, "sd3": TINY_SD3, "flux": TINY_FLUX}
FFN_GROUPS = 8

# Layers that the zero-width mask empties: every stand-in and every shared-projection case.
ZERO_WIDTH = {
    "pixart": ["transformer_blocks.0.attn1", "transformer_blocks.1.attn2", "transformer_blocks.2.ff"],
    "sd3": ["transformer_blocks.0.attn", "transformer_blocks.2.attn", "transformer_blocks.1.attn2",
            "transformer_blocks.0.ff_context", "transformer_blocks.2.ff"],
    "flux": ["transformer_blocks.0.attn", "transformer_blocks.1.ff_context", "single_transformer_blocks.0.attn",
             "single_transformer_blocks.1.proj_mlp", "single_transformer_blocks.2.attn",
             "single_transformer_blocks.2.proj_mlp"],
}
PER_SAMPLE_KEYS = ("hidden_states", "encoder_hidden_states", "pooled_projections", "timestep", "guidance")


def model_class(family: str) -> type[nn.Module]:
    from diffusers.models import FluxTransformer2DModel, PixArtTransformer2DModel, SD3Transformer2DModel

    return {"pixart": PixArtTransformer2DModel, "sd3": SD3Transformer2DModel, "flux": FluxTransformer2DModel}[family]


def build(family: str, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    model = model_class(family)(**TINY[family]).eval()
    # Norm weights start at 1 / 0, which would hide a wrongly sliced or dropped norm: perturb them.
    with torch.no_grad():
        for name, param in model.named_parameters():
            if "norm" in name and param.ndim == 1:
                param.add_(torch.randn_like(param) * 0.2)
    return model


def inputs(model: nn.Module, batch: int = 2, seed: int = 1) -> dict[str, Any]:
    from prunekit.transformer import example_inputs

    kwargs = example_inputs(model, height=LATENT, width=LATENT, text_len=TEXT_LEN, batch=batch,
                            generator=torch.Generator().manual_seed(seed))
    if kwargs["timestep"].dtype == torch.long:
        kwargs["timestep"] = torch.tensor([10, 700, 300, 999][:batch])
    else:
        kwargs["timestep"] = torch.tensor([0.1, 0.7, 0.3, 0.9][:batch])
    return kwargs


def sample(kwargs: dict[str, Any], i: int) -> dict[str, Any]:
    """The inputs of sample ``i`` alone (position ids and None conditions are shared)."""
    return {k: v[i:i + 1] if k in PER_SAMPLE_KEYS else v for k, v in kwargs.items()}


def call(prunable: Any, kwargs: dict[str, Any], gates: torch.Tensor | None = None) -> torch.Tensor:
    """The gated forward through PrunableTransformer's (sample, timestep, text) interface."""
    rest = {k: v for k, v in kwargs.items() if k not in ("hidden_states", "timestep", "encoder_hidden_states")}
    return prunable(kwargs["hidden_states"], kwargs["timestep"], kwargs["encoder_hidden_states"], gates=gates,
                    **rest).sample


def random_mask(prunable: Any, keep_prob: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(prunable.num_units, generator=g) < keep_prob


def masks(prunable: Any, family: str) -> dict[str, torch.Tensor]:
    depth = prunable.depth_indices
    drop = random_mask(prunable, 0.6, 13)
    drop[depth] = True
    drop[depth[::2]] = False
    zero = random_mask(prunable, 0.7, 14)
    zero[depth] = True
    for path in ZERO_WIDTH[family]:
        layer = next(layer for layer in prunable.inventory.width_layers if layer.path == path)
        zero[layer.start:layer.stop] = False
    one = torch.zeros(prunable.num_units, dtype=torch.bool)
    for k, layer in enumerate(prunable.inventory.width_layers):
        one[layer.start + k % layer.count] = True
    one[depth] = True
    return {"random_0.7": random_mask(prunable, 0.7, 11), "random_0.4": random_mask(prunable, 0.4, 12),
            "drop_blocks": drop, "zero_width": zero, "one_unit_per_layer": one}
