"""Tiny U-Nets and masks shared by the tests/test_unet_*.py files (no weights are downloaded)."""

from __future__ import annotations

from typing import Any

import torch

# SD 2.x-like: linear proj_in, heads per block, cross-attention; 2 levels so up/down/mid all appear.
TINY_SD2: dict[str, Any] = {
    "sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (32, 64), "norm_num_groups": 8,
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "attention_head_dim": (2, 4), "cross_attention_dim": 32, "use_linear_projection": True,
}

# SD 1.x-like: conv proj_in, default 32 norm groups (one channel per group at width 32).
TINY_SD1: dict[str, Any] = {
    "sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (32, 64),
    "down_block_types": ("CrossAttnDownBlock2D", "DownBlock2D"),
    "up_block_types": ("UpBlock2D", "CrossAttnUpBlock2D"),
    "attention_head_dim": 4, "cross_attention_dim": 32, "use_linear_projection": False,
}

# SDXL-like: several transformer layers per block, text_time added conditioning.
TINY_SDXL: dict[str, Any] = {
    "sample_size": 16, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
    "block_out_channels": (32, 64), "norm_num_groups": 8,
    "down_block_types": ("DownBlock2D", "CrossAttnDownBlock2D"),
    "up_block_types": ("CrossAttnUpBlock2D", "UpBlock2D"),
    "attention_head_dim": (2, 4), "transformer_layers_per_block": (1, 2),
    "cross_attention_dim": 32, "use_linear_projection": True,
    "addition_embed_type": "text_time", "addition_time_embed_dim": 8,
    "projection_class_embeddings_input_dim": 32 + 6 * 8,
}

TEXT_LEN = 7
LATENT = 16


def build_unet(config: dict[str, Any], seed: int = 0):
    from diffusers import UNet2DConditionModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**config).eval()
    # Norms start at weight 1 / bias 0, which would hide a wrongly sliced norm: perturb them.
    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, (torch.nn.GroupNorm, torch.nn.LayerNorm)) and module.weight is not None:
                module.weight.add_(torch.randn_like(module.weight) * 0.2)
                module.bias.add_(torch.randn_like(module.bias) * 0.2)
    return unet


def inputs(config: dict[str, Any], batch: int = 2, seed: int = 1) -> tuple[tuple, dict[str, Any]]:
    g = torch.Generator().manual_seed(seed)
    sample = torch.randn(batch, config["in_channels"], LATENT, LATENT, generator=g)
    timestep = torch.tensor([10, 700, 300, 999][:batch] + [5] * max(0, batch - 4))
    text = torch.randn(batch, TEXT_LEN, config["cross_attention_dim"], generator=g)
    kwargs: dict[str, Any] = {}
    if config.get("addition_embed_type") == "text_time":
        text_dim = config["projection_class_embeddings_input_dim"] - 6 * config["addition_time_embed_dim"]
        kwargs["added_cond_kwargs"] = {"text_embeds": torch.randn(batch, text_dim, generator=g),
                                       "time_ids": torch.rand(batch, 6, generator=g) * 512}
    return (sample, timestep, text), kwargs


def random_mask(prunable, keep_prob: float, seed: int) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.rand(prunable.num_units, generator=g) < keep_prob


def one_unit_per_layer_mask(prunable) -> torch.Tensor:
    """Every width layer keeps exactly one unit (a different position each layer); depth kept."""
    mask = torch.zeros(prunable.num_units, dtype=torch.bool)
    for k, layer in enumerate(prunable.inventory.width_layers):
        mask[layer.start + k % layer.count] = True
    mask[prunable.depth_indices] = True
    return mask


def block_dropping_mask(prunable, seed: int) -> torch.Tensor:
    """Random width mask with every other depth unit dropped."""
    mask = random_mask(prunable, 0.6, seed)
    depth = prunable.depth_indices
    mask[depth] = True
    mask[depth[::2]] = False
    return mask


def zero_width_mask(prunable, seed: int) -> torch.Tensor:
    """Random mask where one ResNet, one attention and one FFN layer lose every unit."""
    mask = random_mask(prunable, 0.7, seed)
    mask[prunable.depth_indices] = True
    seen: set[str] = set()
    for layer in prunable.inventory.width_layers:
        if layer.kind not in seen and layer.depth_unit is None:
            mask[layer.start:layer.stop] = False
            seen.add(layer.kind)
    assert seen == {"resnet_group", "attn_head", "ffn_group"}
    return mask
