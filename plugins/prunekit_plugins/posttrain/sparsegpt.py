"""SparseGPT (Frantar & Alistarh 2023): mask and weight update from the layer's input Hessian."""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from prunekit.config import option
from prunekit.ops.masks import parse_pattern
from prunekit.ops.sparsegpt import sparsegpt_prune
from prunekit_plugins.posttrain.config import CalibratedConfig
from prunekit_plugins.posttrain.engine import LayerTarget, PruningRule
from prunekit_plugins.posttrain.layers import PrunableLayer


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
        problems = []
        for key, spec in (("text_encoder", self.text_encoder), ("unet", self.unet)):
            try:
                nm = parse_pattern(spec.pattern)
            except ValueError:
                continue  # reported by the section's own check
            if nm is not None and self.blocksize % nm[1]:
                problems.append(f"blocksize {self.blocksize} is not a multiple of {key}.pattern's group size {nm[1]}")
        return problems


class SparseGPTRule(PruningRule):
    """Hessian ``2XXᵀ/n`` per layer from calibration; the solver prunes and updates the rest."""

    statistic = "hessian"

    def __init__(self, blocksize: int = 128, percdamp: float = 0.01) -> None:
        self.blocksize = blocksize
        self.percdamp = percdamp

    def prune_matrix(self, layer: PrunableLayer, statistic: Tensor | None, target: LayerTarget) -> Tensor:
        if statistic is None:
            raise ValueError(f"{layer.name}: SparseGPT needs the layer's input Hessian")
        prune_n, prune_m = (target.nm[1] - target.nm[0], target.nm[1]) if target.nm else (0, 0)
        return sparsegpt_prune(
            layer.matrix(),
            statistic,
            0.0 if target.nm else target.sparsity,
            prune_n=prune_n,
            prune_m=prune_m,
            blocksize=self.blocksize,
            percdamp=self.percdamp,
        )
