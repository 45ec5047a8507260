"""Model plugins of the embedded domain: the shipped teacher (``embedded``) and its architecture,
randomly initialised (``embedded_random``, what ``recipes/tiny/pretrain.yaml`` trains).

The teacher is a stock ``StableDiffusionPipeline``: a cross-attention ``UNet2DConditionModel`` on
16x16x4 latents of a tiny ``AutoencoderKL`` (32 px images, downsampling 2), a 4-layer
``CLIPTextModel`` on the domain's word vocabulary, and SD's PNDM scheduler.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prunekit.config import option

if TYPE_CHECKING:
    from prunekit.model_objective import ModelObjective

SHIPPED_TEACHER = Path(__file__).resolve().parent / "assets" / "teacher"


@dataclass
class EmbeddedConfig:
    path: str | None = option(None, help="diffusers folder (default: the teacher shipped with prunekit)")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = option("cpu", help="cpu, cuda, cuda:1, ...")

    def preflight(self) -> list[str]:
        folder = Path(self.path) if self.path else SHIPPED_TEACHER
        if not (folder / "model_index.json").is_file():
            return [f"teacher folder {folder} has no model_index.json (set model.path=DIR)"]
        return []

    def objective(self, *, local_files: bool = True) -> ModelObjective | None:
        """From the teacher folder's config files (the shipped one is always here)."""
        from prunekit.model_objective import folder_objective

        if self.path is None:
            return folder_objective(SHIPPED_TEACHER, "embedded")
        return folder_objective(self.path) if local_files else None


def build_embedded(config: EmbeddedConfig) -> Any:
    """The shipped teacher through ``DiffusionPipeline.from_pretrained(..., local_files_only=True)``."""
    from prunekit.models import load_pipeline

    pipeline = load_pipeline(str(config.path or SHIPPED_TEACHER), override="model.path", dtype=config.dtype)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(config.device)


@dataclass
class EmbeddedRandomConfig:
    seed: int = option(0, ge=0, help="weights are random, drawn from this seed")
    resolution: int = option(32, ge=16, help="image side in pixels")
    block_out_channels: list[int] = option([64, 128, 128], help="U-Net widths; all but the last block have cross-attention")
    layers_per_block: int = option(1, ge=1)
    attention_heads: list[int] = option([4, 8, 8], help="heads per U-Net block (diffusers' attention_head_dim)")
    cross_attention_dim: int = option(128, ge=8, help="= the text encoder's width")
    text_layers: int = option(4, ge=1)
    text_heads: int = option(4, ge=1)
    vae_channels: list[int] = option([32, 64], help="AutoencoderKL widths; downsampling is 2**(len - 1)")
    latent_channels: int = option(4, ge=1)
    device: str = option("cpu", help="cpu, cuda, cuda:1, ...")

    def check(self) -> list[str]:
        problems = []
        if len(self.block_out_channels) < 2 or any(c <= 0 or c % 32 for c in self.block_out_channels):
            problems.append("block_out_channels: need >= 2 positive multiples of 32 (GroupNorm with 32 groups)")
        if len(self.attention_heads) != len(self.block_out_channels):
            problems.append("attention_heads: need one entry per block_out_channels entry")
        elif any(c % h for c, h in zip(self.block_out_channels, self.attention_heads)):
            problems.append("attention_heads: each must divide its block's width")
        if self.cross_attention_dim % self.text_heads:
            problems.append("text_heads: must divide cross_attention_dim")
        if not self.vae_channels or any(c <= 0 or c % 16 for c in self.vae_channels):
            problems.append("vae_channels: need positive multiples of 16")
        elif self.resolution % 2 ** (len(self.vae_channels) - 1):
            problems.append("resolution: must be divisible by the VAE's downsampling")
        return problems

    def objective(self, *, local_files: bool = True) -> ModelObjective:
        from prunekit.model_objective import ModelObjective

        return ModelObjective("epsilon", "embedded_random (StableDiffusionPipeline, PNDMScheduler)")


def build_embedded_random(config: EmbeddedRandomConfig) -> Any:
    """A randomly initialised pipeline of the teacher's architecture (trained by recipes/tiny/pretrain.yaml)."""
    import torch
    from diffusers import AutoencoderKL, PNDMScheduler, StableDiffusionPipeline, UNet2DConditionModel
    from transformers import CLIPTextConfig, CLIPTextModel

    from prunekit_plugins.domain.tokenizer import build_domain_tokenizer

    torch.manual_seed(config.seed)
    n = len(config.block_out_channels)
    latent = config.resolution // 2 ** (len(config.vae_channels) - 1)
    unet = UNet2DConditionModel(
        sample_size=latent,
        in_channels=config.latent_channels,
        out_channels=config.latent_channels,
        layers_per_block=config.layers_per_block,
        block_out_channels=tuple(config.block_out_channels),
        down_block_types=("CrossAttnDownBlock2D",) * (n - 1) + ("DownBlock2D",),
        up_block_types=("UpBlock2D",) + ("CrossAttnUpBlock2D",) * (n - 1),
        cross_attention_dim=config.cross_attention_dim,
        attention_head_dim=tuple(config.attention_heads),
        norm_num_groups=32,
        use_linear_projection=True,
    )
    vae = AutoencoderKL(
        in_channels=3,
        out_channels=3,
        block_out_channels=tuple(config.vae_channels),
        down_block_types=("DownEncoderBlock2D",) * len(config.vae_channels),
        up_block_types=("UpDecoderBlock2D",) * len(config.vae_channels),
        latent_channels=config.latent_channels,
        layers_per_block=1,
        norm_num_groups=16,
        sample_size=config.resolution,
    )
    tokenizer = build_domain_tokenizer()
    text_encoder = CLIPTextModel(
        CLIPTextConfig(
            vocab_size=len(tokenizer),
            hidden_size=config.cross_attention_dim,
            intermediate_size=4 * config.cross_attention_dim,
            num_hidden_layers=config.text_layers,
            num_attention_heads=config.text_heads,
            max_position_embeddings=tokenizer.model_max_length,
            bos_token_id=tokenizer.bos_token_id,
            eos_token_id=tokenizer.eos_token_id,
            pad_token_id=tokenizer.pad_token_id,
        )
    )
    # SD's sampler and noise schedule (epsilon prediction), as the paper's generation settings use.
    scheduler = PNDMScheduler(
        num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012,
        skip_prk_steps=True, steps_offset=1, set_alpha_to_one=False, prediction_type="epsilon",
    )
    pipeline = StableDiffusionPipeline(
        vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet, scheduler=scheduler,
        safety_checker=None, feature_extractor=None, requires_safety_checker=False,
    )
    # mypy resolves diffusers' top-level StableDiffusionPipeline to its dummy (no-torch) class.
    pipeline.set_progress_bar_config(disable=True)  # type: ignore[attr-defined]
    return pipeline.to(config.device)  # type: ignore[attr-defined]
