"""Model plugins: a diffusers text-to-image pipeline from a folder or hub id, or a tiny one built in code."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from prunekit.config import option
from prunekit.hookspecs import hookimpl

if TYPE_CHECKING:
    from prunekit.model_objective import ModelObjective


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

    def objective(self, *, local_files: bool = True) -> ModelObjective | None:
        """The model's prediction type without loading it: an existing local folder's (or a cached hub
        id's) config files when ``local_files``, else a published hub id's; None when unknown here."""
        from pathlib import Path

        from prunekit.model_objective import cached_objective, folder_objective, published_objective
        from prunekit.models import looks_like_path

        folder = Path(self.path).expanduser()
        if folder.exists() or looks_like_path(self.path):  # a folder, as resolve_pretrained reads it
            return folder_objective(folder, self.path) if local_files and folder.is_dir() else None
        return published_objective(self.path) or (cached_objective(self.path) if local_files else None)


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

    def objective(self, *, local_files: bool = True) -> ModelObjective:
        from prunekit.model_objective import ModelObjective

        return ModelObjective("epsilon", "tiny_random (StableDiffusionPipeline, DDPMScheduler)")


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
