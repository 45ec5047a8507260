"""Wanda (Sun et al. 2023): prune by |W_ij| · ‖X_j‖₂, compared within each output row."""

from __future__ import annotations

from torch import Tensor

from prunekit.ops.masks import wanda_scores
from prunekit_plugins.posttrain.engine import LayerTarget, PruningRule, select_mask
from prunekit_plugins.posttrain.layers import PrunableLayer


class WandaRule(PruningRule):
    """Scores from the calibration inputs' column norms; no weight update."""

    statistic = "norms"

    def __init__(self, scope: str = "row") -> None:
        self.scope = scope

    def prune_matrix(self, layer: PrunableLayer, statistic: Tensor | None, target: LayerTarget) -> Tensor:
        if statistic is None:
            raise ValueError(f"{layer.name}: Wanda needs the layer's input norms")
        matrix = layer.matrix()
        return matrix.masked_fill(select_mask(wanda_scores(matrix, statistic), target, self.scope), 0)
