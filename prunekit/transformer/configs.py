"""Configs of public transformer denoisers, for building them on the meta device (nothing downloaded).

Key fields as in the models' published ``transformer/config.json``; only shapes matter here. Each entry
also records the native resolution (as a latent size; all three use an 8x VAE) and the text length
their pipelines feed by default.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any


def pixart_sigma_config() -> dict[str, Any]:
    """PixArt-alpha/PixArt-Sigma-XL-2-1024-MS: 28 blocks, 16 heads x 72, T5 captions (4096-d)."""
    return {
        "num_attention_heads": 16, "attention_head_dim": 72, "in_channels": 4, "out_channels": 8,
        "num_layers": 28, "cross_attention_dim": 1152, "caption_channels": 4096, "attention_bias": True,
        "sample_size": 128, "patch_size": 2, "activation_fn": "gelu-approximate", "num_embeds_ada_norm": 1000,
        "norm_type": "ada_norm_single", "norm_elementwise_affine": False, "norm_eps": 1e-6,
        "interpolation_scale": 2, "use_additional_conditions": False,
    }


def sd35_medium_config() -> dict[str, Any]:
    """stabilityai/stable-diffusion-3.5-medium (MMDiT-X): 24 joint blocks of 24 heads x 64, the first 13
    with a second image-only self-attention, per-head RMS q/k norms."""
    return {
        "sample_size": 128, "patch_size": 2, "in_channels": 16, "out_channels": 16, "num_layers": 24,
        "attention_head_dim": 64, "num_attention_heads": 24, "joint_attention_dim": 4096,
        "caption_projection_dim": 1536, "pooled_projection_dim": 2048, "pos_embed_max_size": 384,
        "dual_attention_layers": list(range(13)), "qk_norm": "rms_norm",
    }


def flux_dev_config() -> dict[str, Any]:
    """black-forest-labs/FLUX.1-dev: 19 double-stream + 38 single-stream blocks, 24 heads x 128."""
    return {
        "patch_size": 1, "in_channels": 64, "num_layers": 19, "num_single_layers": 38,
        "attention_head_dim": 128, "num_attention_heads": 24, "joint_attention_dim": 4096,
        "pooled_projection_dim": 768, "guidance_embeds": True, "axes_dims_rope": [16, 56, 56],
    }


@dataclass(frozen=True)
class Published:
    """A public model: diffusers class, config, native latent size and default text length."""

    name: str
    class_name: str
    config: dict[str, Any]
    latent: int
    text_len: int
    text_note: str


PUBLISHED: tuple[Published, ...] = (
    Published("PixArt-Σ", "PixArtTransformer2DModel", pixart_sigma_config(), 128, 300,
              "T5, max_sequence_length=300"),
    Published("SD3.5-medium", "SD3Transformer2DModel", sd35_medium_config(), 128, 333,
              "77 CLIP + 256 T5 tokens"),
    Published("FLUX.1-dev", "FluxTransformer2DModel", flux_dev_config(), 128, 512,
              "T5, max_sequence_length=512"),
)
