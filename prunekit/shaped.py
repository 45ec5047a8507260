"""Pipelines with the published shapes of Stable Diffusion and random weights, built in code.

For checks that need the real sizes (memory, speed, ZeRO partitioning) where the weights cannot be
downloaded. The configurations are those of the published model folders; only the tokenizer differs
(the character-level CLIP tokenizer of :mod:`prunekit.tiny`, padded to SD's 77 tokens).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any


def sd21_text_encoder_config() -> dict[str, Any]:
    """stabilityai/stable-diffusion-2-1 text_encoder/config.json (OpenCLIP ViT-H/14 text tower)."""
    return {"vocab_size": 49408, "hidden_size": 1024, "intermediate_size": 4096, "num_hidden_layers": 23,
            "num_attention_heads": 16, "max_position_embeddings": 77, "hidden_act": "gelu",
            "projection_dim": 512, "layer_norm_eps": 1e-5}


def sd_vae_config() -> dict[str, Any]:
    """The AutoencoderKL of SD 1.x / 2.x (vae/config.json)."""
    return {"in_channels": 3, "out_channels": 3, "latent_channels": 4, "layers_per_block": 2,
            "block_out_channels": [128, 256, 512, 512], "down_block_types": ["DownEncoderBlock2D"] * 4,
            "up_block_types": ["UpDecoderBlock2D"] * 4, "norm_num_groups": 32, "sample_size": 768,
            "scaling_factor": 0.18215}


def build_sd21_shaped_pipeline(seed: int = 0, *, sample_size: int = 96) -> Any:
    """A ``StableDiffusionPipeline`` shaped like SD 2.1 (865 M U-Net parameters), random weights.

    ``sample_size`` is the U-Net's native latent size (96 = 768 px, as published; 32 = 256 px).
    """
    import torch
    from diffusers import AutoencoderKL, DDPMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from prunekit.tiny import build_tiny_tokenizer
    from prunekit.unet.configs import sd21_unet_config

    torch.manual_seed(seed)
    tokenizer = build_tiny_tokenizer(max_length=77)
    text_config = CLIPTextConfig(**sd21_text_encoder_config(), bos_token_id=tokenizer.bos_token_id,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id)
    scheduler = DDPMScheduler(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085,
                              beta_end=0.012, clip_sample=False, steps_offset=1, prediction_type="v_prediction")
    return StableDiffusionPipeline(
        vae=AutoencoderKL(**sd_vae_config()), text_encoder=CLIPTextModel(text_config), tokenizer=tokenizer,
        unet=UNet2DConditionModel(**{**sd21_unet_config(), "sample_size": sample_size}), scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )


def build_sd21_shaped_unet(device: str = "cpu", dtype: Any = None, seed: int = 0) -> Any:
    """SD 2.1's U-Net alone, built on ``device`` without a CPU copy (meta, then allocated there), with
    random fan-in scaled weights (activations stay in a normal range: no inf or denormal slow paths in
    timings) and unit norm scales; eval mode, in ``dtype`` (float32 by default)."""
    import math

    import torch
    from diffusers import UNet2DConditionModel

    from prunekit.unet.configs import sd21_unet_config

    with torch.device("meta"):
        unet: Any = UNet2DConditionModel(**sd21_unet_config())
    unet = unet.to_empty(device=device)
    generator = torch.Generator(device=device).manual_seed(seed)
    with torch.no_grad():
        for name, param in unet.named_parameters():
            if name.endswith(("norm1.weight", "norm2.weight", "norm3.weight", "norm.weight", "norm_out.weight")):
                param.fill_(1.0)
            else:
                fan_in = param[0].numel() if param.ndim > 1 else 1
                param.normal_(0.0, 1.0 / math.sqrt(fan_in), generator=generator)
    return (unet if dtype in (None, torch.float32) else unet.to(dtype)).eval()


def save_sd21_shaped_pipeline(folder: str | Path, seed: int = 0, *, sample_size: int = 96,
                              dtype: str = "float16") -> Path:
    """Build :func:`build_sd21_shaped_pipeline` and save it as a diffusers folder (safetensors)."""
    import torch

    folder = Path(folder)
    pipeline = build_sd21_shaped_pipeline(seed, sample_size=sample_size).to(getattr(torch, dtype))
    pipeline.save_pretrained(folder, safe_serialization=True)
    return folder
