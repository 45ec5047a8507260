"""What every structured-pruning stage works on, built once per run by :func:`prepare`.

The stages (``train_router``, ``route_to_codes``, ``finetune_expert``, ``export_mixture``) are plain
functions over a :class:`PruningContext`; APTP and the baselines are assembled from them.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prunekit.encode_config import EncodeConfig

if TYPE_CHECKING:
    from prunekit.conditioning import Conditioning
    from prunekit.engine_config import EngineConfig
    from prunekit.run import Run


@dataclass
class PruningContext:
    """The frozen teacher pipeline, the encoded training data, the prunable denoiser and its budget."""

    run: Run
    seed: int
    pipeline: Any  # frozen, on the compute device in the compute dtype
    encoder: Any  # the prompt encoder (sentence embeddings ``z``)
    encoded: Any  # prunekit.shards.EncodedShards: latents, the conditioning's columns, z
    prunable: Any  # PrunableUNet / PrunableTransformer wrapping the pipeline's denoiser
    budget: Any  # a Budget (prunekit.interfaces)
    latent_hw: tuple[int, int]
    text_len: int
    conditioning: Conditioning

    @property
    def denoiser(self) -> Any:
        """The frozen teacher denoiser (``pipeline.unet`` or ``pipeline.transformer``)."""
        from prunekit.conditioning import denoiser_of

        return denoiser_of(self.pipeline)

    @property
    def unet(self) -> Any:  # the name stages and plugins written for U-Nets read
        return self.denoiser

    @property
    def embed_dim(self) -> int:
        return int(self.encoded.shapes["z"][0]) if "z" in self.encoded.shapes else 1

    @property
    def num_units(self) -> int:
        return int(self.prunable.num_units)


def prepare(run: Run, *, depth: str, encode: EncodeConfig, prompt_encoder: Callable[[], Any]) -> PruningContext:
    """The frozen pipeline, the ``encode`` stage and its data, the prunable U-Net and the budget.

    ``prompt_encoder()`` builds the prompt encoder; it is called after the model is built, so the
    global RNG both consume is drawn in one fixed order (runs are reproducible from the seed).
    """
    from prunekit.conditioning import conditioning_for, denoiser_of
    from prunekit.data import encode_stage, open_encoded
    from prunekit.denoisers import make_prunable
    from prunekit.placement import place_frozen

    # Frozen parts (teacher U-Net, VAE, text encoder) compute on this rank's device in the
    # engine's precision; what is trained is copied from them and handed to the engine.
    pipeline = place_frozen(run.build("model"), run.recipe.data["engine"]["precision"])
    encoder = prompt_encoder()
    run.stage("encode", lambda: encode_stage(run, pipeline, encode, prompt_encoder=encoder))
    encoded = open_encoded(run)
    latent_h, latent_w = (int(x) for x in encoded.shapes["latents"][-2:])
    text_len = int(encoded.shapes["text"][0])
    conditioning = conditioning_for(pipeline)
    # "aptp" names the paper's U-Net layout; a transformer has no such layout and takes its default
    # (every block a depth unit).
    prunable = make_prunable(denoiser_of(pipeline),
                             depth=None if depth == "aptp" and not conditioning.unet_naming else depth)
    budget = run.build("budget", prunable=prunable, height=latent_h, width=latent_w, text_len=text_len)
    files = getattr(budget, "files", None)  # what the budget read (a latency table): the run keeps a copy
    if files:
        from prunekit import run_files

        run.on_main(lambda: run_files.keep_copies(run, files))
    run.log.info("prunable %s denoiser: %d units (%d depth); latent %dx%d, text length %d; dense %.4g %s",
                 conditioning.family, prunable.num_units, len(prunable.depth_indices), latent_h, latent_w, text_len,
                 budget.dense, budget.unit)
    return PruningContext(run=run, seed=int(run.recipe.data.get("seed", 0)), pipeline=pipeline,
                          encoder=encoder, encoded=encoded, prunable=prunable, budget=budget,
                          latent_hw=(latent_h, latent_w), text_len=text_len, conditioning=conditioning)


def stage_engine_config(run: Run, stage: Any) -> EngineConfig:
    """The recipe's ``engine`` section with a stage's ``micro_batch`` / ``grad_accum`` overrides."""
    from prunekit.engine_config import EngineConfig

    cfg = EngineConfig(**run.recipe.data["engine"])
    if getattr(stage, "micro_batch", None) is not None:
        cfg.micro_batch = stage.micro_batch
    if getattr(stage, "grad_accum", None) is not None:
        cfg.grad_accum = stage.grad_accum
    return cfg


def diffusion_batch(latents: Any, cond: Any, scheduler: Any) -> dict[str, Any]:
    """One micro-batch of denoising training, drawn on the CPU from the engine's per-micro-batch RNG
    state (so it is the same on any device): clean latents, the conditioning columns (``cond``), noise
    and timesteps (:func:`prunekit.objectives.draw_timesteps`: DDPM or flow matching)."""
    import torch

    from prunekit.objectives import draw_timesteps

    noise = torch.randn_like(latents)
    return {"latents": latents, "cond": cond, "noise": noise, "timesteps": draw_timesteps(scheduler, len(latents))}


def history_tail_mean(history: list[dict[str, float]], key: str) -> float:
    """Mean of ``key`` over the last tenth of a training history (what a stage reports as final)."""
    tail = history[-max(1, len(history) // 10):]
    return sum(h[key] for h in tail) / len(tail)
