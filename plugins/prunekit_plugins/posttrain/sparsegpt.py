"""SparseGPT (Frantar & Alistarh 2023): mask and weight update from the layer's input Hessian."""

from __future__ import annotations

from torch import Tensor

from prunekit.ops.sparsegpt import sparsegpt_prune
from prunekit_plugins.posttrain.engine import LayerTarget, PruningRule
from prunekit_plugins.posttrain.layers import PrunableLayer


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
