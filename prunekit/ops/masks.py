"""Importance scores and prune-mask selection for post-training sparsity.

Every function works on a weight viewed as a matrix ``(out_features, columns)``; a conv weight is
reshaped by the caller. A *prune mask* is ``True`` where a weight is set to zero. Counts are
exact: a request for sparsity ``s`` of ``n`` weights prunes ``prune_count(n, s)`` of them, spread
over rows (or per-block) so that the layer total is exact rather than off by one per row.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import torch
from torch import Tensor

from prunekit.ops.patterns import parse_pattern  # noqa: F401  (re-exported)


def prune_count(numel: int, sparsity: float) -> int:
    """How many of ``numel`` weights sparsity ``sparsity`` removes (round half up)."""
    return int(math.floor(sparsity * numel + 0.5))


def magnitude_scores(weight: Tensor) -> Tensor:
    """|W| as float32 (a fresh tensor: callers may modify it)."""
    return weight.detach().abs().float()


def wanda_scores(weight: Tensor, input_norms: Tensor) -> Tensor:
    """Wanda's |W_ij| · ‖X_j‖₂ (Sun et al. 2023): ``input_norms`` holds one norm per column."""
    if input_norms.numel() != weight.shape[1]:
        raise ValueError(f"{input_norms.numel()} input norms for a weight with {weight.shape[1]} columns")
    return weight.detach().abs().float() * input_norms.to(weight.device, torch.float32).reshape(1, -1)


def _lowest_per_row(scores: Tensor, counts: Tensor) -> Tensor:
    """Mask of the ``counts[i]`` lowest entries of each row of a 2-D tensor.

    Selection by k-th value (linear time, unlike a sort); entries tied with the threshold are
    taken left to right until each row's count is exact.
    """
    rows = scores.shape[0]
    thresholds = torch.full((rows, 1), float("-inf"), device=scores.device, dtype=scores.dtype)
    for k in torch.unique(counts).tolist():
        if k > 0:
            which = (counts == k).nonzero().reshape(-1)
            thresholds[which] = torch.kthvalue(scores[which], int(k), dim=1, keepdim=True).values
    below = scores < thresholds
    ties = scores == thresholds
    missing = counts.reshape(-1, 1) - below.sum(dim=1, keepdim=True)
    return below | (ties & (ties.cumsum(dim=1) <= missing))


def layer_prune_mask(scores: Tensor, sparsity: float) -> Tensor:
    """Prune the lowest-scored ``sparsity`` of the whole matrix (one threshold per layer)."""
    flat = scores.reshape(1, -1)
    count = torch.tensor([prune_count(flat.shape[1], sparsity)], device=scores.device)
    return _lowest_per_row(flat, count).reshape(scores.shape)


def row_prune_mask(scores: Tensor, sparsity: float) -> Tensor:
    """Prune the lowest-scored entries of each row (Wanda's per-output comparison group).

    Rows prune ``floor(s·cols)`` or one more so that the layer total is ``prune_count(numel, s)``.
    """
    rows, cols = scores.shape
    # cumulative targets: row i prunes round(s·cols·(i+1)) - round(s·cols·i)
    bounds = torch.tensor([prune_count(cols * i, sparsity) for i in range(rows + 1)], device=scores.device)
    return _lowest_per_row(scores, bounds[1:] - bounds[:-1])


def nm_prune_mask(scores: Tensor, keep: int, group: int) -> Tensor:
    """Keep the ``keep`` highest of every ``group`` consecutive columns of each row (N:M)."""
    rows, cols = scores.shape
    if cols % group:
        raise ValueError(f"{cols} columns do not split into groups of {group}")
    grouped = scores.reshape(rows, cols // group, group)
    lowest = torch.topk(grouped, group - keep, dim=2, largest=False).indices
    mask = torch.zeros_like(grouped, dtype=torch.bool)
    mask.scatter_(2, lowest, True)
    return mask.reshape(rows, cols)


def global_prune_masks(scores: Sequence[Tensor], sparsity: float) -> list[Tensor]:
    """One threshold over several layers: prune the lowest ``sparsity`` of all scores together.

    Non-negative float32 values order like their bit patterns, so the threshold is found by
    bisection on the integer view — 31 counting passes, no concatenated copy of a whole model.
    Ties at the threshold are pruned in layer order until the count is exact.
    """
    bits = [s.detach().float().reshape(-1).view(torch.int32) for s in scores]
    if any(bool((b < 0).any()) for b in bits):
        raise ValueError("global selection needs non-negative scores")
    k = prune_count(sum(b.numel() for b in bits), sparsity)
    if k == 0:
        return [torch.zeros_like(s, dtype=torch.bool) for s in scores]
    lo, hi = 0, 2**31 - 1  # smallest t with count(bits <= t) >= k
    while lo < hi:
        mid = (lo + hi) // 2
        if sum(int((b <= mid).sum()) for b in bits) >= k:
            hi = mid
        else:
            lo = mid + 1
    ties_left = k - sum(int((b < lo).sum()) for b in bits)
    masks = []
    for s, b in zip(scores, bits):
        mask = b < lo
        tie = (b == lo).nonzero().reshape(-1)[:ties_left]
        mask[tie] = True
        ties_left -= tie.numel()
        masks.append(mask.reshape(s.shape))
    return masks


def outlier_ratio(scores: Tensor, threshold: float) -> float:
    """OWL's layer outlier ratio: the share of scores above ``threshold`` × their mean."""
    scores = scores.float()
    return float((scores > threshold * scores.mean()).float().mean())


def owl_layer_sparsities(
    outlier_ratios: Sequence[float],
    target: float,
    lam: float,
    weights: Sequence[float] | None = None,
    *,
    max_sparsity: float = 0.99,
) -> list[float]:
    """OWL (Yin et al. 2024): per-layer sparsity from the layer's outlier ratio.

    Ratios are mapped linearly onto ``[0, 2λ]`` (more outliers, lower sparsity) and shifted so
    that the average — weighted by ``weights``, the layers' sizes, so the component's realised
    sparsity is the target — equals ``target``. Values are kept in ``[0, max_sparsity]``; the
    shift is found by bisection so that clipping never moves the average off the target.
    """
    n = len(outlier_ratios)
    w = torch.tensor(weights if weights is not None else [1.0] * n, dtype=torch.float64)
    ratios = torch.tensor(list(outlier_ratios), dtype=torch.float64)
    if n == 0:
        return []
    spread = ratios.max() - ratios.min()
    if target <= 0:
        return [0.0] * n
    if spread <= 0:
        return [float(target)] * n
    # OWL keeps more of the layers with more outliers: sparsity = shift - normalised ratio
    offset = -(ratios - ratios.min()) / spread * 2 * lam
    total = w.sum()

    def mean_at(shift: float) -> float:
        return float((w * (offset + shift).clamp(0.0, max_sparsity)).sum() / total)

    lo, hi = -1.0, 1.0 + 2 * lam
    for _ in range(100):
        mid = (lo + hi) / 2
        if mean_at(mid) < target:
            lo = mid
        else:
            hi = mid
    return (offset + (lo + hi) / 2).clamp(0.0, max_sparsity).tolist()
