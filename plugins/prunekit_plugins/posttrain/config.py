"""Recipe schemas shared by the post-training methods: per-component sparsity and calibration.

The defaults — text encoder 47.5 %, U-Net 35 % — are the configuration Ramesh & Zhao
(arXiv 2411.15113) recommend for Stable Diffusion 2.

Components: the denoiser (``denoiser``, or its U-Net name ``unet``: one section, either key) and
every text encoder of the pipeline. ``text_encoder`` applies to each text encoder alone (SDXL's
two CLIPs, SD3's two CLIPs and T5, Flux's CLIP and T5: each pruned to that sparsity on its own
layers); ``text_encoder_2`` / ``text_encoder_3`` replace it for that encoder (a whole section: its
unset keys take the defaults).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import ClassVar, Literal, Protocol

from prunekit.config import option
from prunekit.ops.patterns import parse_pattern

_PATTERN_HELP = (
    "'unstructured' or 'N:M' (at most N non-zeros in every M consecutive input weights of a row, "
    "e.g. '2:4'); with N:M, sparsity must be 1 - N/M or 0"
)
_EXCLUDE_HELP = "module-name globs (relative to the component) left dense"


def _sparsity_problems(sparsity: float, pattern: str) -> list[str]:
    try:
        nm = parse_pattern(pattern)
    except ValueError as exc:
        return [str(exc)]
    if nm is not None and sparsity not in (0, 0.0) and abs(sparsity - (1 - nm[0] / nm[1])) > 1e-9:
        return [f"sparsity {sparsity} does not match pattern {pattern} ({1 - nm[0] / nm[1]:g}); set it to that or 0"]
    return []


@dataclass
class TextEncoderSparsity:
    """How much of the CLIP text encoder to prune (0 leaves it bit-identical)."""

    sparsity: float = option(0.475, ge=0, lt=1, help="fraction of the prunable weights set to zero")
    pattern: str = option("unstructured", help=_PATTERN_HELP)
    exclude: list[str] = option([], help=_EXCLUDE_HELP)

    def check(self) -> list[str]:
        return _sparsity_problems(self.sparsity, self.pattern)


#: The denoiser's latent stem and head, left dense by default (like an LLM's embedding and head): the
#: U-Net's conv_in / conv_out; PixArt's and SD3's patch embedding (pos_embed.proj) and Flux's
#: x_embedder; the transformers' final proj_out. A glob that names nothing in a model is ignored.
DENOISER_EXCLUDE = ["conv_in", "conv_out", "pos_embed", "x_embedder", "proj_out"]


@dataclass
class DenoiserSparsity:
    """How much of the denoiser (U-Net or transformer) to prune (0 leaves it bit-identical)."""

    sparsity: float = option(0.35, ge=0, lt=1, help="fraction of the prunable weights set to zero")
    pattern: str = option("unstructured", help=_PATTERN_HELP)
    exclude: list[str] = option(DENOISER_EXCLUDE, help=_EXCLUDE_HELP + " (default: the latent stem and head)")

    def check(self) -> list[str]:
        return _sparsity_problems(self.sparsity, self.pattern)


UNetSparsity = DenoiserSparsity  # the section's name before transformer denoisers

#: The text encoders a pipeline may have, in pruning order (each pruned alone).
TEXT_ENCODERS = ("text_encoder", "text_encoder_2", "text_encoder_3")


@dataclass
class CalibrationConfig:
    """Prompts that calibration runs through the model the way generation does."""

    prompts: int = option(32, ge=1, help="the first N prompts of the dataset")
    steps: int = option(25, ge=1, help="denoising steps per calibration generation; denoiser inputs are recorded at every step")
    guidance_scale: float = option(
        7.5, ge=0, help="the pipeline's guidance_scale: classifier-free guidance (> 1 also records the unconditional "
                        "batch); Flux: its embedded guidance (FLUX.1-dev samples at 3.5)")
    seed: int = option(0, ge=0, help="seeds the initial noise of calibration generations")
    batch_size: int = option(4, ge=1, help="prompts per calibration generation / text-encoder batch")
    height: int | None = option(None, ge=8, help="calibration image height (default: the model's)")
    width: int | None = option(None, ge=8, help="calibration image width (default: the model's)")


@dataclass
class PosttrainConfig:
    """Options every post-training method has: one sparsity section per component."""

    requires: ClassVar[tuple[str, ...]] = ("model",)

    text_encoder: TextEncoderSparsity = field(default_factory=TextEncoderSparsity)
    text_encoder_2: TextEncoderSparsity | None = option(
        None, help="the second text encoder's section (SDXL CLIP-G, SD3 CLIP-G, Flux T5); null: text_encoder's")
    text_encoder_3: TextEncoderSparsity | None = option(
        None, help="the third text encoder's section (SD3's T5); null: text_encoder's")
    denoiser: DenoiserSparsity | None = option(
        None, help="the denoiser's section (U-Net or transformer); null: unet's, else the defaults")
    unet: DenoiserSparsity | None = option(None, help="the denoiser's section under its U-Net name (set one of the two)")

    def check(self) -> list[str]:
        if self.denoiser is not None and self.unet is not None:
            return ["denoiser and unet are the same section (the denoiser's); set one of them "
                    "(or 'unet: null' when extending a recipe that has one)"]
        return []

    @property
    def denoiser_section(self) -> DenoiserSparsity:
        """The denoiser's section, whichever key the recipe used."""
        return self.denoiser or self.unet or DenoiserSparsity()

    def text_encoder_section(self, name: str) -> TextEncoderSparsity:
        """The section that prunes the text encoder called ``name`` on the pipeline."""
        override = getattr(self, name, None) if name != "text_encoder" else None
        return override or self.text_encoder


@dataclass
class CalibratedConfig(PosttrainConfig):
    """Methods whose scores need calibration inputs."""

    requires: ClassVar[tuple[str, ...]] = ("model", "dataset")

    calibration: CalibrationConfig = field(default_factory=CalibrationConfig)
    sequential: bool = option(
        False,
        help="re-record each block's inputs after the blocks before it are pruned (one pass per block) "
        "instead of one pass over the dense model",
    )


class HasCalibration(Protocol):
    """What calibration reads from a method's options: a :class:`CalibratedConfig`, or any object
    with a ``calibration`` section."""

    @property
    def calibration(self) -> CalibrationConfig: ...


# --- per-method schemas (kept here, free of torch, so `prunekit plugins`/`validate` stay light) ---


@dataclass
class MagnitudeConfig(PosttrainConfig):
    scope: Literal["layer", "row", "global"] = option(
        "layer",
        help="compare |W| within each layer, each output row, or across all pruned layers of the component "
        "(ignored for N:M patterns)",
    )


@dataclass
class WandaConfig(CalibratedConfig):
    scope: Literal["row", "layer"] = option(
        "row", help="comparison group: each output row (Wanda's choice) or the whole layer (ignored for N:M)"
    )


@dataclass
class SparseGPTConfig(CalibratedConfig):
    sequential: bool = option(
        True,
        help="record each block's Hessians after the blocks before it are pruned (one pass per block; "
        "memory holds one block's Hessians)",
    )
    blocksize: int = option(128, ge=1, help="columns whose mask is chosen together (lazy batch size)")
    percdamp: float = option(0.01, gt=0, help="dampening: this fraction of the mean Hessian diagonal is added to it")

    def check(self) -> list[str]:
        problems = super().check()
        sections = [("text_encoder", self.text_encoder), ("text_encoder_2", self.text_encoder_2),
                    ("text_encoder_3", self.text_encoder_3), ("denoiser", self.denoiser), ("unet", self.unet)]
        for key, spec in sections:
            if spec is None:
                continue
            try:
                nm = parse_pattern(spec.pattern)
            except ValueError:
                continue  # reported by the section's own check
            if nm is not None and self.blocksize % nm[1]:
                problems.append(f"blocksize {self.blocksize} is not a multiple of {key}.pattern's group size {nm[1]}")
        return problems


@dataclass
class OwlConfig(CalibratedConfig):
    # a dataset is needed only with base 'wanda'; prunekit_check_recipe reports it
    requires: ClassVar[tuple[str, ...]] = ("model",)

    base: Literal["wanda", "magnitude"] = option("wanda", help="scores whose outliers are counted and that prune")
    outlier_threshold: float = option(5.0, gt=0, help="OWL's M: a score is an outlier above M x the layer mean")
    lam: float = option(0.08, ge=0, lt=0.5, help="OWL's λ: per-layer sparsities span target ± λ")
