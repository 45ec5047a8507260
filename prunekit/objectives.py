"""The denoising training objective of a scheduler family: which timesteps are drawn, how clean
latents are noised, and what the denoiser should predict.

- DDPM-family schedulers (``alphas_cumprod``; SD 1.x / 2.x, SDXL, PixArt): integer timesteps drawn
  uniformly, DDPM's ``add_noise`` on the scheduler's ``alphas_cumprod`` (also for samplers such as
  Euler whose own ``add_noise`` differs), target by ``prediction_type`` (epsilon, v-prediction, sample).
- Flow matching (``FlowMatchEulerDiscreteScheduler``; SD3, Flux): sigma drawn uniformly and shifted
  as the scheduler shifts it (``shift``), ``x_t = (1 - s) x0 + s noise``, the model sees
  ``t = s * num_train_timesteps`` and predicts the velocity ``noise - x0``.
"""

from __future__ import annotations

from typing import Any

import torch
from diffusers.schedulers.scheduling_ddpm import DDPMScheduler

FLOW = "flow_matching"


def is_flow_matching(scheduler: Any) -> bool:
    """True for flow-matching schedulers (no ``alphas_cumprod``; diffusers' FlowMatch* classes)."""
    return type(scheduler).__name__.startswith("FlowMatch")


def prediction_type(scheduler: Any) -> str:
    """``epsilon`` / ``v_prediction`` / ``sample`` as the scheduler says, or ``flow_matching``."""
    if is_flow_matching(scheduler):
        return FLOW
    return str(scheduler.config.prediction_type)


def draw_timesteps(scheduler: Any, n: int) -> torch.Tensor:
    """``n`` training timesteps from the global (per-micro-batch) RNG, on the CPU."""
    num = int(scheduler.config.num_train_timesteps)
    if not is_flow_matching(scheduler):
        return torch.randint(0, num, (n,))
    sigma = torch.rand(n)
    shift = float(scheduler.config.get("shift", 1.0))
    # Flux shifts by resolution at sampling time (use_dynamic_shifting) and trains unshifted, as
    # diffusers' training scripts do; SD3 trains with the shift it samples with.
    if not scheduler.config.get("use_dynamic_shifting", False) and shift != 1.0:
        sigma = shift * sigma / (1 + (shift - 1) * sigma)
    return sigma * num


def add_noise(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor) -> torch.Tensor:
    """Noisy latents at ``timesteps`` (see the module docstring for each family)."""
    if not is_flow_matching(scheduler):
        # DDPM's forward process on the scheduler's alphas_cumprod, whatever sampler the pipeline
        # ships: SDXL's Euler scheduler would add Karras-scaled noise (x0 + sigma * noise) instead.
        return DDPMScheduler.add_noise(scheduler, latents, noise, timesteps)
    sigma = _sigma(scheduler, timesteps, latents)
    return (1 - sigma) * latents + sigma * noise


def target(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
           kind: str = "auto") -> torch.Tensor:
    """What the denoiser should predict; ``kind`` ``auto`` is the scheduler's :func:`prediction_type`."""
    kind = prediction_type(scheduler) if kind == "auto" else kind
    if (kind == FLOW) != is_flow_matching(scheduler):  # prunekit validate refuses it first
        raise ValueError(f"prediction type {kind!r} does not fit the scheduler {type(scheduler).__name__} "
                         f"(its own: {prediction_type(scheduler)!r}); set the ddpm loss's prediction_type=auto")
    if kind == FLOW:
        return noise - latents
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return DDPMScheduler.get_velocity(scheduler, latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(f"unsupported prediction type {kind!r}")


def _sigma(scheduler: Any, timesteps: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    sigma = timesteps.to(like.device, torch.float32) / float(scheduler.config.num_train_timesteps)
    return sigma.reshape(-1, *([1] * (like.ndim - 1))).to(like.dtype)
