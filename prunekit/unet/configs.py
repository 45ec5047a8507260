"""Configs of the public Stable Diffusion U-Nets, for building them without downloading anything.

Only shapes matter here (weights are random or absent): tests, the MAC report and the latency benchmark
build these on the ``meta`` device or with random weights.
"""

from __future__ import annotations

from typing import Any


def sd15_unet_config() -> dict[str, Any]:
    """runwayml/stable-diffusion-v1-5 (SD 1.x): conv proj_in, 8 heads everywhere, 768-d text."""
    return {
        "sample_size": 64, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
        "block_out_channels": [320, 640, 1280, 1280],
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        "attention_head_dim": 8, "cross_attention_dim": 768, "use_linear_projection": False,
    }


def sd21_unet_config() -> dict[str, Any]:
    """stabilityai/stable-diffusion-2-1 (768 px, v-prediction): 1620 prunable units with depth="aptp"."""
    return {
        "sample_size": 96, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
        "block_out_channels": [320, 640, 1280, 1280],
        "down_block_types": ["CrossAttnDownBlock2D"] * 3 + ["DownBlock2D"],
        "up_block_types": ["UpBlock2D"] + ["CrossAttnUpBlock2D"] * 3,
        # diffusers' historical naming: for SD 2.x this is the number of heads per block.
        "attention_head_dim": [5, 10, 20, 20], "cross_attention_dim": 1024,
        "use_linear_projection": True, "upcast_attention": True,
    }


def sdxl_unet_config() -> dict[str, Any]:
    """stabilityai/stable-diffusion-xl-base-1.0."""
    return {
        "sample_size": 128, "in_channels": 4, "out_channels": 4, "layers_per_block": 2,
        "block_out_channels": [320, 640, 1280],
        "down_block_types": ["DownBlock2D", "CrossAttnDownBlock2D", "CrossAttnDownBlock2D"],
        "up_block_types": ["CrossAttnUpBlock2D", "CrossAttnUpBlock2D", "UpBlock2D"],
        "attention_head_dim": [5, 10, 20], "transformer_layers_per_block": [1, 2, 10],
        "cross_attention_dim": 2048, "use_linear_projection": True,
        "addition_embed_type": "text_time", "addition_time_embed_dim": 256,
        "projection_class_embeddings_input_dim": 2816,
    }
