"""Budgets: the compute a pruned architecture uses, as a differentiable function of its gates."""

from __future__ import annotations

from dataclasses import dataclass

from prunekit.config import option
from prunekit.hookspecs import hookimpl


@dataclass
class MacsBudgetConfig:
    target: float = option(0.78, gt=0, le=1, help="target mean MACs as a fraction of the dense U-Net")


class MacsBudget:
    """U-Net MACs per forward (batch 1, real text length) from the prunable U-Net's exact MAC model."""

    def __init__(self, config: MacsBudgetConfig, *, prunable, height: int, width: int, text_len: int) -> None:  # noqa: ANN001
        self.target = config.target
        self.model = prunable.mac_model(height=height, width=width, text_len=text_len)

    def ratio(self, gates):  # noqa: ANN001, ANN201
        """MACs of each row of ``gates`` as a fraction of the dense model's."""
        return self.model.ratio(gates)

    def macs(self, gates):  # noqa: ANN001, ANN201
        return self.model(gates)


@hookimpl
def prunekit_register_components(register) -> None:
    register("budget", "macs", MacsBudget, schema=MacsBudgetConfig,
             doc="MAC budget: target fraction of the dense U-Net's MACs (exact MAC model)")
