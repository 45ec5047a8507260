"""Model plugins: a diffusers text-to-image pipeline from a folder or hub id, or a tiny one built in code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prunekit.config import option
from prunekit.hookspecs import hookimpl


@dataclass
class DiffusersModelConfig:
    path: str = option(
        "stabilityai/stable-diffusion-2-1", help="diffusers folder or hub id (must be cached when offline)"
    )
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = option("auto", help="auto (this rank's GPU if there is one, else cpu), cpu, cuda (this rank's "
                                      "GPU under a launcher), cuda:N")
    without: list[str] = option(
        [], help="pipeline components loaded as None, e.g. SD3's T5 [text_encoder_3, tokenizer_3] (the pipeline "
                 "then conditions on zeros in its place), or a folder saved without them")

    def preflight(self) -> list[str]:
        from prunekit.errors import MissingPathError
        from prunekit.models import resolve_pretrained

        try:
            resolve_pretrained(self.path, override="model.path")
        except MissingPathError as exc:
            return [str(exc)]
        return []


def build_diffusers(config: DiffusersModelConfig) -> object:
    """A diffusers pipeline via ``from_pretrained`` (local folder, or hub id from the local cache)."""
    from prunekit.models import load_pipeline

    pipeline = load_pipeline(config.path, override="model.path", dtype=config.dtype,
                             **{name: None for name in config.without})
    pipeline.set_progress_bar_config(disable=True)
    from prunekit.placement import compute_device

    return pipeline.to(compute_device(config.device))


@dataclass
class TinyModelConfig:
    seed: int = option(0, ge=0, help="weights are random, drawn from this seed")
    block_out_channels: list[int] = option([32, 64])
    cross_attention_dim: int = option(32, ge=1)
    attention_head_dim: int = option(2, ge=1, help="number of heads per attention layer (diffusers naming)")

    def check(self) -> list[str]:
        if not self.block_out_channels or any(c <= 0 or c % 8 for c in self.block_out_channels):
            return ["block_out_channels: need positive multiples of 8"]
        return []


def build_tiny(config: TinyModelConfig) -> object:
    """A randomly initialised tiny SD-shaped pipeline (smoke runs; no weights needed)."""
    from prunekit.tiny import build_tiny_pipeline, tiny_unet_config

    unet_config = tiny_unet_config(
        block_out_channels=tuple(config.block_out_channels),
        cross_attention_dim=config.cross_attention_dim,
        attention_head_dim=config.attention_head_dim,
    )
    pipeline = build_tiny_pipeline(config.seed, unet_config=unet_config)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline


@hookimpl
def prunekit_register_components(register) -> None:
    register("model", "diffusers_sd", build_diffusers, schema=DiffusersModelConfig,
             doc="Diffusers text-to-image pipeline (SD 1.x/2.x, SDXL, SD3, PixArt-Sigma, Flux) from a folder or "
                 "cached hub id")
    register("model", "tiny_random", build_tiny, schema=TinyModelConfig,
             doc="Tiny randomly initialised SD-shaped pipeline built in code (smoke tests)")
