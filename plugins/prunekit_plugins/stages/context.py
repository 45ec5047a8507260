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
    from prunekit.engine_config import EngineConfig
    from prunekit.run import Run


@dataclass
class PruningContext:
    """The frozen teacher pipeline, the encoded training data, the prunable U-Net and its budget."""

    run: Run
    seed: int
    pipeline: Any  # frozen, on the compute device in the compute dtype
    encoder: Any  # the prompt encoder (sentence embeddings ``z``)
    encoded: Any  # prunekit.shards.EncodedShards: latents, text states, z
    prunable: Any  # prunekit.unet.PrunableUNet wrapping ``pipeline.unet``
    budget: Any  # a Budget (prunekit.interfaces)
    latent_hw: tuple[int, int]
    text_len: int

    @property
    def unet(self) -> Any:
        return self.pipeline.unet

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
    from prunekit.data import encode_stage, open_encoded
    from prunekit.placement import place_frozen
    from prunekit.unet import make_prunable

    # Frozen parts (teacher U-Net, VAE, text encoder) compute on this rank's device in the
    # engine's precision; what is trained is copied from them and handed to the engine.
    pipeline = place_frozen(run.build("model"), run.recipe.data["engine"]["precision"])
    encoder = prompt_encoder()
    run.stage("encode", lambda: encode_stage(run, pipeline, encode, prompt_encoder=encoder))
    encoded = open_encoded(run)
    latent_h, latent_w = (int(x) for x in encoded.shapes["latents"][-2:])
    text_len = int(encoded.shapes["text"][0])
    prunable = make_prunable(pipeline.unet, depth=None if depth == "none" else depth)
    budget = run.build("budget", prunable=prunable, height=latent_h, width=latent_w, text_len=text_len)
    files = getattr(budget, "files", None)  # what the budget read (a latency table): the run keeps a copy
    if files:
        from prunekit import run_files

        run.on_main(lambda: run_files.keep_copies(run, files))
    run.log.info("prunable U-Net: %d units (%d depth); latent %dx%d, text length %d; dense %.4g %s",
                 prunable.num_units, len(prunable.depth_indices), latent_h, latent_w, text_len,
                 budget.dense, budget.unit)
    return PruningContext(run=run, seed=int(run.recipe.data.get("seed", 0)), pipeline=pipeline,
                          encoder=encoder, encoded=encoded, prunable=prunable, budget=budget,
                          latent_hw=(latent_h, latent_w), text_len=text_len)


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
    state (so it is the same on any device): clean latents, text states, noise and timesteps."""
    import torch

    return {"latents": latents, "cond": cond, "noise": torch.randn_like(latents),
            "timesteps": torch.randint(0, scheduler.config.num_train_timesteps, (len(latents),))}


def history_tail_mean(history: list[dict[str, float]], key: str) -> float:
    """Mean of ``key`` over the last tenth of a training history (what a stage reports as final)."""
    tail = history[-max(1, len(history) // 10):]
    return sum(h[key] for h in tail) / len(tail)
