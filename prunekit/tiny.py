"""Tiny Stable-Diffusion-shaped components built in code (no download), for smoke runs and tests.

They have SD's structure — a cross-attention ``UNet2DConditionModel``, an ``AutoencoderKL``, a
CLIP text encoder with a real (character-level) CLIP BPE tokenizer and a DDPM-family scheduler —
so every code path that loads SD 2.1 through ``from_pretrained`` is exercised on them.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

SPECIAL_TOKENS = ("<|startoftext|>", "<|endoftext|>")


def _byte_alphabet() -> list[str]:
    # GPT-2 / CLIP byte-to-unicode table: every byte maps to a printable character.
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs = bs[:]
    n = 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return [chr(c) for c in cs]


def build_tiny_tokenizer(max_length: int = 32) -> Any:
    """A character-level ``CLIPTokenizer`` (byte alphabet, no merges); saves and reloads like CLIP's."""
    from transformers import CLIPTokenizer

    alphabet = _byte_alphabet()
    vocab: dict[str, int] = {}
    for token in [*alphabet, *(c + "</w>" for c in alphabet), *SPECIAL_TOKENS]:
        vocab.setdefault(token, len(vocab))
    return CLIPTokenizer(vocab=vocab, merges=[], model_max_length=max_length)


def tiny_unet_config(
    block_out_channels: tuple[int, ...] = (32, 64),
    cross_attention_dim: int = 32,
    attention_head_dim: int | tuple[int, ...] = 2,
    sample_size: int = 8,
    in_channels: int = 4,
    layers_per_block: int = 2,
) -> dict[str, Any]:
    n = len(block_out_channels)
    return dict(
        sample_size=sample_size,
        in_channels=in_channels,
        out_channels=in_channels,
        layers_per_block=layers_per_block,
        block_out_channels=tuple(block_out_channels),
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=cross_attention_dim,
        attention_head_dim=attention_head_dim,
        norm_num_groups=min(32, block_out_channels[0]),
        use_linear_projection=True,
    )


def build_tiny_pipeline(seed: int = 0, *, unet_config: dict[str, Any] | None = None) -> Any:
    """A randomly initialised tiny ``StableDiffusionPipeline`` (8x8 latents, 32x32 pixels)."""
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline

    # From diffusers.models: mypy resolves diffusers' top-level names to its dummy (no-torch) classes.
    from diffusers.models import UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    torch.manual_seed(seed)
    unet = UNet2DConditionModel(**(unet_config or tiny_unet_config()))
    vae = AutoencoderKL(
        block_out_channels=(16, 32),
        in_channels=3,
        out_channels=3,
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        latent_channels=4,
        norm_num_groups=8,
        sample_size=32,
    )
    tokenizer = build_tiny_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=unet.config.cross_attention_dim,
            intermediate_size=64,
            num_hidden_layers=2,
            num_attention_heads=2,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    scheduler = DDPMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        clip_sample=False, steps_offset=1,
    )
    return StableDiffusionPipeline(
        vae=vae,
        text_encoder=text_encoder,
        tokenizer=tokenizer,
        unet=unet,
        scheduler=scheduler,
        safety_checker=None,
        feature_extractor=None,
        requires_safety_checker=False,
    )


def save_tiny_pipeline(folder: str | Path, seed: int = 0, **kwargs: Any) -> Path:
    """Build a tiny pipeline and save it as a diffusers folder (safetensors)."""
    folder = Path(folder)
    build_tiny_pipeline(seed, **kwargs).save_pretrained(folder, safe_serialization=True)
    return folder
