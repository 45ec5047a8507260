"""OWL (Yin et al. 2024): outlier-weighted layer-wise sparsity on top of Wanda or magnitude.

Each layer's outlier ratio — the share of its scores above ``M`` times their mean — sets its
sparsity: ratios are mapped onto a band of width 2λ around the target (more outliers, lower
sparsity), weighted by layer size so the component's sparsity is the target. Layers are then
pruned by the base method's rule. With an N:M pattern the layers get mixed N:M patterns (same M,
per-layer N) whose size-weighted average is as close to the pattern's sparsity as whole N allow.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

from torch import Tensor

from prunekit.ops.masks import (
    magnitude_scores,
    outlier_ratio,
    owl_layer_sparsities,
    parse_pattern,
    wanda_scores,
)
from prunekit_plugins.posttrain.engine import LayerTarget, PruningRule, select_mask
from prunekit_plugins.posttrain.layers import PrunableLayer


def mixed_nm_keeps(sparsities: Sequence[float], group: int, target_keep: int, weights: Sequence[float]) -> list[int]:
    """Whole N per layer (1..group) near ``(1 - s)·group`` whose size-weighted mean stays within
    half a step of ``target_keep``: floor everything, then round up the largest remainders."""
    ideal = [(1 - s) * group for s in sparsities]
    keeps = [min(group, max(1, math.floor(k))) for k in ideal]
    budget = target_keep * sum(weights)
    used = sum(k * w for k, w in zip(keeps, weights))
    for i in sorted(range(len(keeps)), key=lambda j: keeps[j] - ideal[j]):
        if keeps[i] < group and used + weights[i] / 2 <= budget:
            keeps[i] += 1
            used += weights[i]
    return keeps


class OwlRule(PruningRule):
    """Targets from a dense pass's outlier ratios; pruning by the base rule's scores."""

    targets_need_statistics = True

    def __init__(self, base: str = "wanda", outlier_threshold: float = 5.0, lam: float = 0.08) -> None:
        self.base = base
        self.outlier_threshold = outlier_threshold
        self.lam = lam
        self.statistic = "norms" if base == "wanda" else None
        self.scope = "row" if base == "wanda" else "layer"
        self.outlier_ratios: dict[str, float] = {}

    def _scores(self, layer: PrunableLayer, matrix: Tensor, statistic: Tensor | None) -> Tensor:
        if self.base == "magnitude":
            return magnitude_scores(matrix)
        if statistic is None:
            raise ValueError(f"{layer.name}: OWL over Wanda needs the layer's input norms")
        return wanda_scores(matrix, statistic)

    def targets(
        self,
        layers: Sequence[PrunableLayer],
        sparsity: float,
        pattern: str,
        statistics: dict[str, Tensor] | None,
    ) -> dict[str, LayerTarget]:
        stats = statistics or {}
        self.outlier_ratios = {
            layer.name: outlier_ratio(self._scores(layer, layer.matrix(), stats.get(layer.name)), self.outlier_threshold)
            for layer in layers
        }
        ratios = [self.outlier_ratios[layer.name] for layer in layers]
        weights = [float(layer.numel) for layer in layers]
        nm = parse_pattern(pattern)
        if nm is None:
            per_layer = owl_layer_sparsities(ratios, sparsity, self.lam, weights)
            return {layer.name: LayerTarget(s) for layer, s in zip(layers, per_layer)}
        keep, group = nm
        per_layer = owl_layer_sparsities(ratios, 1 - keep / group, self.lam, weights)
        keeps = mixed_nm_keeps(per_layer, group, keep, weights)
        return {
            layer.name: LayerTarget(1 - k / group, (k, group) if k < group else None)
            for layer, k in zip(layers, keeps)
        }

    def prune_matrix(self, layer: PrunableLayer, statistic: Tensor | None, target: LayerTarget) -> Tensor:
        matrix = layer.matrix()
        return matrix.masked_fill(select_mask(self._scores(layer, matrix, statistic), target, self.scope), 0)
