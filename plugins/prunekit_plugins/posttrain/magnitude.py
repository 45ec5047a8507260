"""Magnitude pruning: remove the weights of smallest |W|, per layer, per row or globally."""

from __future__ import annotations

from collections.abc import Sequence

from torch import Tensor

from prunekit.ops.masks import global_prune_masks, magnitude_scores
from prunekit_plugins.posttrain.engine import LayerTarget, PruningRule, select_mask
from prunekit_plugins.posttrain.layers import PrunableLayer


class MagnitudeRule(PruningRule):
    """Needs no calibration: the score is |W|."""

    def __init__(self, scope: str = "layer") -> None:
        self.scope = scope

    def prune_matrix(self, layer: PrunableLayer, statistic: Tensor | None, target: LayerTarget) -> Tensor:
        matrix = layer.matrix()
        return matrix.masked_fill(select_mask(magnitude_scores(matrix), target, self.scope), 0)

    def prune_group(
        self, layers: Sequence[PrunableLayer], statistics: dict[str, Tensor], targets: dict[str, LayerTarget]
    ) -> None:
        uniform = {(t.sparsity, t.nm) for t in targets.values()}
        if self.scope != "global" or any(t.nm for t in targets.values()) or len(uniform) != 1 or not layers:
            super().prune_group(layers, statistics, targets)
            return
        # one threshold over the whole component; the masks hold one bit per weight
        sparsity = next(iter(uniform))[0]
        masks = global_prune_masks([layer.weight.detach().abs() for layer in layers], sparsity)
        for layer, mask in zip(layers, masks):
            layer.weight.data.masked_fill_(mask, 0)
