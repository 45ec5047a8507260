"""Budgets: the compute a pruned architecture uses, as a differentiable function of its gates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from prunekit.config import option
from prunekit.hookspecs import hookimpl

if TYPE_CHECKING:
    import torch


@dataclass
class MacsBudgetConfig:
    target: float = option(0.78, gt=0, le=1, help="target mean MACs as a fraction of the dense U-Net")


class MacsBudget:
    """U-Net MACs per forward (batch 1, real text length) from the prunable U-Net's exact MAC model."""

    unit = "MACs"

    def __init__(self, config: MacsBudgetConfig, *, prunable: Any, height: int, width: int, text_len: int) -> None:
        self.target = config.target
        self.model = prunable.mac_model(height=height, width=width, text_len=text_len)

    @property
    def dense(self) -> float:
        return float(self.model.dense)

    def ratio(self, gates: torch.Tensor) -> torch.Tensor:
        """MACs of each row of ``gates`` as a fraction of the dense model's."""
        return self.model.ratio(gates)

    def cost_of(self, mask: torch.Tensor | None) -> float:
        """Exact MACs of one hard mask (None: the dense model)."""
        return self.dense if mask is None else float(self.model(mask))

    def macs(self, gates: torch.Tensor) -> torch.Tensor:
        return self.model(gates)


@hookimpl
def prunekit_register_components(register) -> None:
    register("budget", "macs", MacsBudget, schema=MacsBudgetConfig, provides=("budget",),
             doc="MAC budget: target fraction of the dense U-Net's MACs (exact MAC model)")
