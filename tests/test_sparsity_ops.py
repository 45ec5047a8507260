"""Sparsity kernels: score functions, exact mask selection, SparseGPT, OWL ratios, input capture."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from prunekit.calibration import InputHessian, InputNorms, capture_inputs, input_rows
from prunekit.ops import sparsegpt_prune
from prunekit.ops.masks import (
    global_prune_masks,
    layer_prune_mask,
    magnitude_scores,
    nm_prune_mask,
    outlier_ratio,
    owl_layer_sparsities,
    parse_pattern,
    prune_count,
    row_prune_mask,
    wanda_scores,
)

SPARSITIES = (0.1, 0.35, 0.475, 0.5, 0.7)


pytestmark = pytest.mark.usefixtures("single_thread")


def correlated_inputs(n: int, cols: int, rank: int = 16, seed: int = 0) -> torch.Tensor:
    """Rows of a low-rank signal plus noise and a few loud channels, like real activations."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, rank, generator=g) @ torch.randn(rank, cols, generator=g)
    x += 0.1 * torch.randn(n, cols, generator=g)
    x[:, :3] *= 8
    return x


def relative_error(w: torch.Tensor, pruned: torch.Tensor, x: torch.Tensor) -> float:
    return float(((x @ (w - pruned).T) ** 2).sum() / ((x @ w.T) ** 2).sum())


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_layer_and_row_masks_prune_exactly_the_requested_count(sparsity):
    scores = torch.rand(37, 53, generator=torch.Generator().manual_seed(1))
    layer = layer_prune_mask(scores, sparsity)
    row = row_prune_mask(scores, sparsity)
    assert int(layer.sum()) == int(row.sum()) == prune_count(37 * 53, sparsity)
    per_row = row.sum(dim=1)
    assert int(per_row.max() - per_row.min()) <= 1  # spread evenly, off by at most one
    # a layer mask removes the smallest scores: every pruned score is below every kept one
    assert scores[layer].max() <= scores[~layer].min()
    # within each row the pruned scores are the row's smallest
    for r in range(37):
        if per_row[r] and per_row[r] < 53:
            assert scores[r][row[r]].max() <= scores[r][~row[r]].min()


@pytest.mark.parametrize("sparsity", SPARSITIES)
def test_exact_counts_hold_with_tied_scores(sparsity):
    scores = torch.randint(0, 3, (24, 40), generator=torch.Generator().manual_seed(6)).float()
    for mask in (layer_prune_mask(scores, sparsity), row_prune_mask(scores, sparsity)):
        assert int(mask.sum()) == prune_count(scores.numel(), sparsity)
    row = row_prune_mask(scores, sparsity)
    for r in range(24):
        if 0 < int(row[r].sum()) < 40:
            assert scores[r][row[r]].max() <= scores[r][~row[r]].min()


@pytest.mark.parametrize("pattern", ["2:4", "1:4", "4:8"])
def test_nm_mask_keeps_the_largest_n_of_every_m(pattern):
    keep, group = parse_pattern(pattern)
    scores = torch.rand(16, 64, generator=torch.Generator().manual_seed(2))
    mask = nm_prune_mask(scores, keep, group)
    grouped_mask = mask.reshape(16, -1, group)
    assert torch.all(grouped_mask.sum(-1) == group - keep)
    grouped = scores.reshape(16, -1, group)
    kept_min = grouped.masked_fill(grouped_mask, float("inf")).amin(-1)
    pruned_max = grouped.masked_fill(~grouped_mask, float("-inf")).amax(-1)
    assert torch.all(pruned_max <= kept_min)


def test_parse_pattern_rejects_nonsense():
    assert parse_pattern("unstructured") is None
    for bad in ("4:2", "0:4", "2-4", "a:b", "4:4"):
        with pytest.raises(ValueError):
            parse_pattern(bad)


def test_wanda_ranks_by_weight_times_input_norm_within_rows():
    g = torch.Generator().manual_seed(3)
    w = torch.randn(8, 32, generator=g)
    x = torch.randn(256, 32, generator=g) * torch.linspace(0.05, 5, 32)  # very unequal column norms
    norms = x.norm(dim=0)
    mask = row_prune_mask(wanda_scores(w, norms), 0.5)
    products = w.abs() * norms
    for r in range(8):
        assert products[r][mask[r]].max() <= products[r][~mask[r]].min()
        assert int(mask[r].sum()) == 16
    # the input norms matter: plain magnitude would prune a different set
    assert not torch.equal(mask, row_prune_mask(magnitude_scores(w), 0.5))


def test_wanda_norms_from_hooks_match_the_activations():
    layer = nn.Linear(12, 5)
    x = torch.randn(3, 7, 12)
    with capture_inputs({"fc": layer}, "norms") as stats:
        layer(x[:2])
        layer(x[2:])
    assert torch.allclose(stats["fc"].result(), x.reshape(-1, 12).norm(dim=0), rtol=1e-5)


def test_sparsegpt_error_below_magnitude_and_wanda_on_correlated_inputs():
    x = correlated_inputs(2048, 256)
    w = torch.randn(96, 256, generator=torch.Generator().manual_seed(4))
    hessian = 2 * x.T @ x / x.shape[0]
    sgpt = sparsegpt_prune(w, hessian, 0.5, blocksize=64)
    mag = w.masked_fill(layer_prune_mask(magnitude_scores(w), 0.5), 0)
    wanda = w.masked_fill(row_prune_mask(wanda_scores(w, x.norm(dim=0)), 0.5), 0)
    assert int((sgpt == 0).sum()) == prune_count(w.numel(), 0.5)
    e_sgpt, e_mag, e_wanda = (relative_error(w, p, x) for p in (sgpt, mag, wanda))
    assert e_sgpt < 0.5 * min(e_mag, e_wanda)


@pytest.mark.parametrize("sparsity", [0.35, 0.475])
def test_sparsegpt_prunes_exact_count_across_blocks(sparsity):
    x = correlated_inputs(512, 200)  # 200 columns: blocks of 64 leave a ragged last block
    w = torch.randn(33, 200)
    pruned = sparsegpt_prune(w, 2 * x.T @ x / 512, sparsity, blocksize=64)
    assert int((pruned == 0).sum()) == prune_count(w.numel(), sparsity)


def test_sparsegpt_at_sparsity_zero_is_the_dense_weight():
    x = correlated_inputs(512, 64)
    w = torch.randn(16, 64)
    assert torch.equal(sparsegpt_prune(w, 2 * x.T @ x / 512, 0.0), w)


def test_sparsegpt_two_four_and_conv_weights():
    x = correlated_inputs(1024, 72)
    w = torch.randn(10, 8, 3, 3)  # a conv weight: 8·3·3 = 72 unfolded columns
    pruned = sparsegpt_prune(w, 2 * x.T @ x / 1024, 0.0, prune_n=2, prune_m=4, blocksize=32)
    assert pruned.shape == w.shape and pruned.dtype == w.dtype
    groups = (pruned.reshape(10, -1, 4) == 0).sum(-1)
    assert torch.all(groups == 2)
    mag = w.reshape(10, -1).masked_fill(nm_prune_mask(magnitude_scores(w.reshape(10, -1)), 2, 4), 0)
    assert relative_error(w.reshape(10, -1), pruned.reshape(10, -1), x) < relative_error(w.reshape(10, -1), mag, x)


def test_sparsegpt_survives_dead_inputs():
    x = correlated_inputs(512, 64)
    x[:, 10] = 0  # an input that is always zero: singular Hessian without the dead-column fix
    w = torch.randn(8, 64)
    pruned = sparsegpt_prune(w, 2 * x.T @ x / 512, 0.25)
    assert torch.isfinite(pruned).all()
    assert torch.all(pruned[:, 10] == 0)  # free to prune, so pruned first


def test_global_masks_use_one_threshold_and_exact_count():
    g = torch.Generator().manual_seed(5)
    scores = [torch.rand(10, 10, generator=g), 3 * torch.rand(7, 9, generator=g), torch.zeros(4, 4)]
    masks = global_prune_masks(scores, 0.4)
    total = sum(s.numel() for s in scores)
    assert sum(int(m.sum()) for m in masks) == prune_count(total, 0.4)
    pruned = torch.cat([s[m] for s, m in zip(scores, masks)])
    kept = torch.cat([s[~m] for s, m in zip(scores, masks)])
    assert pruned.max() <= kept.min()
    # layers of larger scores keep more: the threshold is shared, not per layer
    assert masks[1].float().mean() < masks[0].float().mean()


def test_owl_sparsities_average_to_target_and_follow_outlier_ratios():
    ratios = [0.01, 0.08, 0.03, 0.05, 0.02]
    sizes = [100.0, 400.0, 50.0, 250.0, 1000.0]
    out = owl_layer_sparsities(ratios, 0.5, 0.08, sizes)
    weighted = sum(s * n for s, n in zip(out, sizes)) / sum(sizes)
    assert weighted == pytest.approx(0.5, abs=1e-9)
    order = sorted(range(5), key=lambda i: ratios[i])
    assert all(out[a] > out[b] for a, b in zip(order, order[1:]))  # more outliers, less pruning
    assert max(out) - min(out) == pytest.approx(2 * 0.08)
    # near the bounds, clipping must not move the average
    low = owl_layer_sparsities(ratios, 0.05, 0.2, sizes)
    assert min(low) >= 0 and sum(s * n for s, n in zip(low, sizes)) / sum(sizes) == pytest.approx(0.05, abs=1e-9)
    assert owl_layer_sparsities([0.1, 0.1], 0.3, 0.08) == [0.3, 0.3]


def test_outlier_ratio_counts_scores_above_m_times_mean():
    scores = torch.ones(100)
    scores[:7] = 100.0
    assert outlier_ratio(scores, 5.0) == pytest.approx(0.07)


def test_hessian_is_running_two_x_xt_over_n():
    x = torch.randn(300, 6)
    stat = InputHessian(6)
    for chunk in x.split(77):
        stat.update(chunk)
    assert torch.allclose(stat.result(), 2 * x.T @ x / 300, atol=1e-5)
    norms = InputNorms(6)
    for chunk in x.split(50):
        norms.update(chunk)
    assert torch.allclose(norms.result(), x.norm(dim=0), atol=1e-5)


@pytest.mark.parametrize("stride,padding", [(1, 1), (2, 1), (1, "same"), (1, 0)])
def test_conv_inputs_unfold_to_the_weight_matrix_columns(stride, padding):
    conv = nn.Conv2d(3, 4, 3, stride=stride, padding=padding, bias=False)
    x = torch.randn(2, 3, 9, 9)
    rows = torch.cat(list(input_rows(conv, x)))
    out = conv(x)  # (2, 4, H, W)
    expected = out.permute(0, 2, 3, 1).reshape(-1, 4)
    assert torch.allclose(rows @ conv.weight.reshape(4, -1).T, expected, atol=1e-5)
    with capture_inputs({"conv": conv}, "hessian") as stats:
        conv(x)
    assert torch.allclose(stats["conv"].result(), 2 * rows.T @ rows / rows.shape[0], atol=1e-5)
    assert F.unfold(x, 3, padding=1).shape[1] == conv.weight[0].numel()
