"""What a ``loss`` plugin receives, and the diffusion arithmetic several losses share.

A loss plugin builds a callable ``loss(inputs: LossInputs) -> Tensor`` (a scalar, already
multiplied by its configured weight) with a ``weight`` attribute. Methods fill only the fields
their losses need; a loss that finds a required field missing raises a clear error.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch


@dataclass
class LossInputs:
    pred: torch.Tensor | None = None  # the (pruned) U-Net output
    noise: torch.Tensor | None = None
    latents: torch.Tensor | None = None  # clean x0 latents
    timesteps: torch.Tensor | None = None
    scheduler: Any = None  # a diffusers noise scheduler (alphas_cumprod, prediction_type)
    teacher_pred: torch.Tensor | None = None
    block_outputs: list[torch.Tensor] = field(default_factory=list)
    teacher_block_outputs: list[torch.Tensor] = field(default_factory=list)
    # Per-sample weights summing to 1 (e.g. APTP eq. 15 averages per expert, then over experts);
    # None means the plain batch mean.
    sample_weights: torch.Tensor | None = None
    extra: dict[str, Any] = field(default_factory=dict)  # router embeddings, MACs, ...

    def reduce(self, per_sample: torch.Tensor) -> torch.Tensor:
        if self.sample_weights is None:
            return per_sample.mean()
        return (per_sample * self.sample_weights.to(per_sample)).sum()

    def get(self, key: str, loss: str) -> Any:
        if key not in self.extra:
            raise ValueError(f"loss {loss!r} needs {key!r}, which this method does not provide")
        return self.extra[key]

    def need(self, *names: str, loss: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"loss {loss!r} needs {', '.join(missing)}, which this method does not provide")


def per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a.float() - b.float()) ** 2).flatten(1).mean(1)


def prediction_target(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                      prediction_type: str = "auto") -> torch.Tensor:
    kind = scheduler.config.prediction_type if prediction_type == "auto" else prediction_type
    if kind == "epsilon":
        return noise
    if kind == "v_prediction":
        return scheduler.get_velocity(latents, noise, timesteps)
    if kind == "sample":
        return latents
    raise ValueError(f"unsupported prediction type {kind!r}")


def snr(scheduler: Any, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep."""
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas / (1 - alphas)
