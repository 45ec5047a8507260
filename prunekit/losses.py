"""What a ``loss`` plugin receives, and the diffusion arithmetic several losses share.

A loss plugin builds a callable ``loss(inputs: LossInputs) -> Tensor`` (a scalar, already
multiplied by its configured weight) with a ``weight`` attribute and a ``needs`` set: the
:class:`LossInputs` fields it reads. A method declares the fields it can fill (its schema's
``loss_inputs``), ``prunekit validate`` refuses a loss whose needs it cannot meet, and the method
computes what is costly only when a loss needs it (the teacher's prediction and block outputs).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import torch


@dataclass
class LossInputs:
    # Denoising: the (pruned) U-Net's prediction for noisy ``latents`` at ``timesteps``.
    pred: torch.Tensor | None = None
    noise: torch.Tensor | None = None
    latents: torch.Tensor | None = None  # clean x0 latents
    timesteps: torch.Tensor | None = None
    scheduler: Any = None  # a diffusers noise scheduler (alphas_cumprod, prediction_type)
    # Distillation: the dense teacher on the same inputs; down/mid/up block outputs of both.
    teacher_pred: torch.Tensor | None = None
    block_outputs: list[torch.Tensor] | None = None
    teacher_block_outputs: list[torch.Tensor] | None = None
    # Routing: each prompt's sentence embedding, its predicted architecture (relaxed gates), the
    # cosine similarity to every code and the code it was assigned while training.
    prompt_embeddings: torch.Tensor | None = None
    arch_vectors: torch.Tensor | None = None
    code_similarity: torch.Tensor | None = None
    code_assignment: torch.Tensor | None = None
    # Budget: the cost of the trained architecture(s) as a fraction of the dense model, and its target.
    cost_ratio: torch.Tensor | None = None
    cost_target: float | None = None
    # Per-sample weights summing to 1 (e.g. APTP eq. 15 averages per expert, then over experts);
    # None means the plain batch mean.
    sample_weights: torch.Tensor | None = None
    # Anything else a third-party method hands its own losses (read with ``get``).
    extra: dict[str, Any] = field(default_factory=dict)

    def reduce(self, per_sample: torch.Tensor) -> torch.Tensor:
        if self.sample_weights is None:
            return per_sample.mean()
        return (per_sample * self.sample_weights.to(per_sample)).sum()

    def get(self, key: str, loss: str) -> Any:
        """A field (or an ``extra`` entry), or a clear error naming the loss that wanted it."""
        value = getattr(self, key, None) if key in INPUT_FIELDS else self.extra.get(key)
        if value is None:
            raise ValueError(f"loss {loss!r} needs {key!r}, which this method does not provide")
        return value

    def need(self, *names: str, loss: str) -> None:
        missing = [n for n in names if getattr(self, n) is None]
        if missing:
            raise ValueError(f"loss {loss!r} needs {', '.join(missing)}, which this method does not provide")


#: The fields a loss may declare in ``needs``.
INPUT_FIELDS: frozenset[str] = frozenset(
    f.name for f in dataclasses.fields(LossInputs) if f.name not in ("extra", "sample_weights")
)
def losses_need(losses: Mapping[str, Any]) -> frozenset[str]:
    """The LossInputs fields a set of built losses reads (a loss without ``needs`` reads nothing declared)."""
    out: frozenset[str] = frozenset()
    for loss in losses.values():
        out |= frozenset(getattr(loss, "needs", ()))
    return out


DENOISING = frozenset({"pred", "noise", "latents", "timesteps", "scheduler"})
DISTILLATION = frozenset({"teacher_pred", "block_outputs", "teacher_block_outputs"})
TEACHER = frozenset({"teacher_pred", "teacher_block_outputs"})


def per_sample_mse(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    return ((a.float() - b.float()) ** 2).flatten(1).mean(1)


def prediction_target(scheduler: Any, latents: torch.Tensor, noise: torch.Tensor, timesteps: torch.Tensor,
                      prediction_type: str = "auto") -> torch.Tensor:
    """The denoiser's target (see :func:`prunekit.objectives.target`; flow matching: ``noise - x0``)."""
    from prunekit.objectives import target

    return target(scheduler, latents, noise, timesteps, prediction_type)


def snr(scheduler: Any, timesteps: torch.Tensor) -> torch.Tensor:
    """Signal-to-noise ratio alpha_bar / (1 - alpha_bar) at each timestep (DDPM-family schedulers)."""
    from prunekit.objectives import is_flow_matching

    if is_flow_matching(scheduler):
        raise ValueError("Min-SNR weighting (snr_gamma) is defined for DDPM-family schedulers, "
                         "not flow matching; set snr_gamma: null")
    alphas = scheduler.alphas_cumprod.to(timesteps.device)[timesteps].float()
    return alphas / (1 - alphas)
