"""Gating schemes: how real-valued architecture logits become (differentiable) unit gates.

A gate plugin builds an object with
``__call__(logits, *, training) -> gates`` (same shape, values in [0, 1]) and
``hard(logits) -> mask`` (deterministic {0, 1}; at least one unit kept in every width group) and
``deployed(logits) -> gates``: ``hard`` in the forward pass with a straight-through gradient, so a
budget can be charged for the architecture that will actually be exported, not for noisy samples.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prunekit.config import option
from prunekit.hookspecs import hookimpl

if TYPE_CHECKING:  # torch is imported where a gate runs, so that listing plugins stays light
    from torch import Tensor


def keep_one_per_group(mask: Tensor, logits: Tensor, groups: Iterable[Tensor]) -> Tensor:
    """A width layer with every unit off would not be a layer: keep its highest-logit unit."""
    import torch

    mask = mask.clone()
    for idx in groups:
        idx = idx.to(mask.device)
        block = mask.index_select(-1, idx)
        empty = block.sum(-1) == 0
        if empty.any():
            best = idx[logits.index_select(-1, idx).argmax(-1)]
            rows = torch.nonzero(empty, as_tuple=True)
            if mask.ndim == 1:
                mask[best] = 1
            else:
                mask[rows[0], best[rows[0]]] = 1
    return mask


def straight_through_hard(hard: Tensor, logits: Tensor) -> Tensor:
    """Forward: the deterministic mask. Backward: d/dlogit of sigmoid(logit), the probability that
    the unit is kept under the gate's logistic noise (both gates here threshold at logit 0)."""
    import torch

    keep = torch.sigmoid(logits)
    return hard.to(logits.dtype) + keep - keep.detach()


@dataclass
class GumbelSigmoidConfig:
    temperature: float = option(0.4, gt=0, help="gamma in sigmoid((logit + g) / gamma)")
    straight_through: bool = option(False, help="forward hard 0/1 values, backward through the soft ones")


class GumbelSigmoid:
    """Gumbel-sigmoid gates (APTP eq. 9): sigmoid((logit + g)/γ), g ~ Logistic (the difference of two Gumbels)."""

    def __init__(self, config: GumbelSigmoidConfig, *, groups: Iterable[Tensor] = ()) -> None:
        self.config = config
        self.groups = list(groups)

    def __call__(self, logits: Tensor, *, training: bool) -> Tensor:
        import torch

        if not training:
            return self.hard(logits).to(logits.dtype)
        u = torch.rand_like(logits).clamp_(1e-6, 1 - 1e-6)
        noise = torch.log(u) - torch.log1p(-u)
        soft = torch.sigmoid((logits + noise) / self.config.temperature)
        if not self.config.straight_through:
            return soft
        return (soft > 0.5).to(soft.dtype) + soft - soft.detach()

    def hard(self, logits: Tensor) -> Tensor:
        return keep_one_per_group((logits > 0).to(logits.dtype), logits, self.groups)

    def deployed(self, logits: Tensor) -> Tensor:
        return straight_through_hard(self.hard(logits), logits)


@dataclass
class HardConcreteConfig:
    temperature: float = option(2.0 / 3.0, gt=0, help="beta of the hard-concrete distribution")
    stretch_low: float = option(-0.1, lt=0)
    stretch_high: float = option(1.1, gt=1)


class HardConcrete:
    """Hard-concrete gates (Louizos et al. 2018): stretched, clamped concrete; exact zeros in training."""

    def __init__(self, config: HardConcreteConfig, *, groups: Iterable[Tensor] = ()) -> None:
        self.config = config
        self.groups = list(groups)

    def _stretch(self, s: Tensor) -> Tensor:
        c = self.config
        return (s * (c.stretch_high - c.stretch_low) + c.stretch_low).clamp(0, 1)

    def __call__(self, logits: Tensor, *, training: bool) -> Tensor:
        import torch

        if not training:
            return self.hard(logits).to(logits.dtype)
        u = torch.rand_like(logits).clamp_(1e-6, 1 - 1e-6)
        s = torch.sigmoid((torch.log(u) - torch.log1p(-u) + logits) / self.config.temperature)
        return self._stretch(s)

    def hard(self, logits: Tensor) -> Tensor:
        import torch

        return keep_one_per_group((self._stretch(torch.sigmoid(logits)) > 0.5).to(logits.dtype), logits, self.groups)

    def deployed(self, logits: Tensor) -> Tensor:
        return straight_through_hard(self.hard(logits), logits)


@hookimpl
def prunekit_register_components(register) -> None:
    register("gate", "gumbel_sigmoid", GumbelSigmoid, schema=GumbelSigmoidConfig,
             doc="Gumbel-sigmoid gates (APTP), optional straight-through hard values")
    register("gate", "hard_concrete", HardConcrete, schema=HardConcreteConfig,
             doc="Hard-concrete gates (L0 regularisation), exact zeros during training")
