"""Model plugins of the embedded domain's transformer teacher: ``embedded_dit`` (the shipped folder,
once trained) and ``embedded_dit_random`` (its architecture with a random transformer: what
``recipes/tiny/pretrain_dit.yaml`` trains).

The DiT teacher is a stock ``StableDiffusion3Pipeline`` built around the U-Net teacher's trained parts:

- its ``AutoencoderKL`` (4 latent channels, 16x16 latents of 32 px images), with the ``shift_factor``
  SD3's pipeline needs (0.0: the latents are not re-centred) and the same ``scaling_factor``;
- its domain tokenizer, as ``tokenizer`` and ``tokenizer_2``;
- its trained 4-layer CLIP text encoder, as both ``text_encoder`` and ``text_encoder_2``, each a
  ``CLIPTextModelWithProjection`` with an identity projection (the pooled state is the trained EOS
  state). SD3 needs two CLIPs (L and G); the same frozen weights twice keep both streams trained
  for 1.7 MB, where a second small random CLIP would only add noise to ignore;
- no T5 (``text_encoder_3`` / ``tokenizer_3`` None), and no zero tokens in its place either: the
  transformer records ``max_sequence_length`` 0 (:data:`prunekit.conditioning.SEQUENCE_LENGTH_KEY`),
  so it sees the 16 CLIP tokens alone (diffusers' default, 256 zero tokens, would cost ~5x the compute
  on 64 image tokens);
- an ``SD3Transformer2DModel`` (patch 2: 64 image tokens; 5 joint blocks of width 192, 6 heads of 32);
- ``FlowMatchEulerDiscreteScheduler`` with shift 1.0 (64 image tokens: no resolution shift).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from prunekit.config import option
from prunekit_plugins.domain.teacher import SHIPPED_TEACHER

if TYPE_CHECKING:
    from prunekit.model_objective import ModelObjective

SHIPPED_DIT_TEACHER = Path(__file__).resolve().parent / "assets" / "teacher_dit"
TRAIN_COMMAND = "prunekit run recipes/tiny/pretrain_dit.yaml --output runs/pretrain_dit"
DIT_LABEL = "embedded_dit (StableDiffusion3Pipeline, FlowMatchEulerDiscreteScheduler)"


def _not_trained(folder: Path) -> str:
    return (f"model embedded_dit: the DiT teacher is not trained yet ({folder} has no model_index.json): train it "
            f"with `{TRAIN_COMMAND}` (model.device=cuda on a GPU; docs/domain.md) and copy "
            f"runs/pretrain_dit/artifacts/pipeline to {folder}, or set model.path=DIR")


@dataclass
class EmbeddedDiTConfig:
    path: str | None = option(None, help="diffusers folder (default: the DiT teacher shipped with prunekit)")
    dtype: Literal["float32", "bfloat16", "float16"] = "float32"
    device: str = option("cpu", help="cpu, cuda, cuda:1, ...")

    def preflight(self) -> list[str]:
        folder = Path(self.path) if self.path else SHIPPED_DIT_TEACHER
        if not (folder / "model_index.json").is_file():
            if self.path is None:
                return [_not_trained(folder)]
            return [f"teacher folder {folder} has no model_index.json (set model.path=DIR)"]
        return []

    def objective(self, *, local_files: bool = True) -> ModelObjective | None:
        """Flow matching by construction; a given folder's config files when they can be read."""
        from prunekit.model_objective import ModelObjective, folder_objective

        if self.path is not None:
            return folder_objective(self.path) if local_files else None
        return folder_objective(SHIPPED_DIT_TEACHER, "embedded_dit") or ModelObjective("flow_matching", DIT_LABEL)


def build_embedded_dit(config: EmbeddedDiTConfig) -> Any:
    """The shipped DiT teacher through ``DiffusionPipeline.from_pretrained(..., local_files_only=True)``."""
    from prunekit.errors import MissingPathError
    from prunekit.models import load_pipeline

    folder = Path(config.path) if config.path else SHIPPED_DIT_TEACHER
    if config.path is None and not (folder / "model_index.json").is_file():
        raise MissingPathError(_not_trained(folder))
    pipeline = load_pipeline(str(folder), override="model.path", dtype=config.dtype)
    pipeline.set_progress_bar_config(disable=True)
    return pipeline.to(config.device)


@dataclass
class EmbeddedDiTRandomConfig:
    seed: int = option(0, ge=0, help="the transformer's weights are random, drawn from this seed")
    num_layers: int = option(5, ge=1, help="joint transformer blocks")
    num_attention_heads: int = option(6, ge=1)
    attention_head_dim: int = option(32, ge=8, help="width = heads x head dim")
    patch_size: int = option(2, ge=1, help="latent patch side: (16 / patch)^2 image tokens")
    shift: float = option(1.0, gt=0, help="the flow-matching scheduler's timestep shift")
    parts_from: str | None = option(
        None, help="U-Net teacher folder whose trained VAE, tokenizer and text encoder are reused "
                   "(default: the shipped one)")
    device: str = option("cpu", help="cpu, cuda, cuda:1, ...")

    def check(self) -> list[str]:
        return [] if 16 % self.patch_size == 0 else ["patch_size: must divide the 16x16 latent"]

    def preflight(self) -> list[str]:
        folder = Path(self.parts_from) if self.parts_from else SHIPPED_TEACHER
        if not (folder / "model_index.json").is_file():
            return [f"teacher folder {folder} has no model_index.json (set model.parts_from=DIR)"]
        return []

    def objective(self, *, local_files: bool = True) -> ModelObjective:
        from prunekit.model_objective import ModelObjective

        return ModelObjective("flow_matching", "embedded_dit_random (StableDiffusion3Pipeline, "
                                               "FlowMatchEulerDiscreteScheduler)")


def clip_with_projection(folder: Path) -> Any:
    """A ``CLIPTextModelWithProjection`` carrying a trained ``CLIPTextModel``'s weights, its projection
    the identity (float32)."""
    import torch
    from safetensors.torch import load_file
    from transformers import CLIPTextConfig, CLIPTextModelWithProjection

    config = CLIPTextConfig.from_pretrained(folder)
    config.projection_dim = config.hidden_size
    config.architectures = ["CLIPTextModelWithProjection"]
    model = CLIPTextModelWithProjection(config)
    # transformers 5 saves a CLIPTextModel's weights without the ``text_model.`` prefix, 4.x with it.
    state = {k if k.startswith("text_model.") else f"text_model.{k}": v.float()
             for k, v in load_file(str(folder / "model.safetensors")).items()}
    missing, unexpected = model.load_state_dict(state, strict=False)
    if unexpected or set(missing) - {"text_projection.weight"}:
        raise ValueError(f"{folder}: not a CLIPTextModel's weights (missing {missing}, unexpected {unexpected})")
    with torch.no_grad():
        model.text_projection.weight.copy_(torch.eye(config.hidden_size))
    return model.float().eval()


def build_embedded_dit_random(config: EmbeddedDiTRandomConfig) -> Any:
    """The DiT teacher's architecture: the U-Net teacher's trained VAE and text encoder, a random
    ``SD3Transformer2DModel`` (trained by recipes/tiny/pretrain_dit.yaml)."""
    import torch
    from diffusers import AutoencoderKL, FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from diffusers.models import SD3Transformer2DModel
    from transformers import CLIPTokenizer

    from prunekit.conditioning import SEQUENCE_LENGTH_KEY

    parts = Path(config.parts_from) if config.parts_from else SHIPPED_TEACHER
    vae = AutoencoderKL.from_pretrained(parts / "vae", torch_dtype=torch.float32)
    vae.register_to_config(shift_factor=0.0)  # SD3's pipeline decodes latents / scaling + shift
    tokenizer = CLIPTokenizer.from_pretrained(parts / "tokenizer")
    tokenizer_2 = CLIPTokenizer.from_pretrained(parts / "tokenizer")
    text_encoder = clip_with_projection(parts / "text_encoder")
    text_encoder_2 = clip_with_projection(parts / "text_encoder")
    text_width = int(text_encoder.config.hidden_size)
    latent = int(vae.config.sample_size) // 2 ** (len(vae.config.block_out_channels) - 1)
    width = config.num_attention_heads * config.attention_head_dim
    torch.manual_seed(config.seed)
    transformer = SD3Transformer2DModel(
        sample_size=latent, patch_size=config.patch_size, in_channels=int(vae.config.latent_channels),
        out_channels=int(vae.config.latent_channels), num_layers=config.num_layers,
        attention_head_dim=config.attention_head_dim, num_attention_heads=config.num_attention_heads,
        # the two CLIPs' states side by side; their pooled (projected) states concatenated
        joint_attention_dim=2 * text_width, caption_projection_dim=width, pooled_projection_dim=2 * text_width,
        pos_embed_max_size=latent // config.patch_size,
    )
    # No T5 and no zero tokens in its place: every prunekit call passes max_sequence_length=0.
    transformer.register_to_config(**{SEQUENCE_LENGTH_KEY: 0})
    scheduler = FlowMatchEulerDiscreteScheduler(num_train_timesteps=1000, shift=config.shift)
    pipeline = StableDiffusion3Pipeline(
        transformer=transformer, scheduler=scheduler, vae=vae, text_encoder=text_encoder, tokenizer=tokenizer,
        text_encoder_2=text_encoder_2, tokenizer_2=tokenizer_2, text_encoder_3=None, tokenizer_3=None,
    )
    # mypy resolves diffusers' top-level pipeline classes to their dummy (no-torch) classes.
    pipeline.set_progress_bar_config(disable=True)  # type: ignore[attr-defined]
    return pipeline.to(config.device)  # type: ignore[attr-defined]
