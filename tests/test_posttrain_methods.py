"""Post-training methods on the tiny SD-shaped pipeline: realised sparsity, calibration, sequencing."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from prunekit_plugins.posttrain.config import CalibrationConfig, TextEncoderSparsity, UNetSparsity
from prunekit_plugins.posttrain.engine import prune_component
from prunekit_plugins.posttrain.layers import PrunableLayer, select_layers, unit_of
from prunekit_plugins.posttrain.magnitude import MagnitudeRule
from prunekit_plugins.posttrain.method import component_feed, prune_pipeline_component
from prunekit_plugins.posttrain.owl import OwlRule, mixed_nm_keeps
from prunekit_plugins.posttrain.sparsegpt import SparseGPTRule
from prunekit_plugins.posttrain.wanda import WandaRule

from prunekit.calibration import PipelineFeed, TextEncoderFeed, capture_inputs, input_rows
from prunekit.errors import PrunekitError
from prunekit.ops.masks import parse_pattern, prune_count
from prunekit.tiny import build_tiny_pipeline

PROMPTS = ["a red circle", "a blue square on grass", "a dog on a beach", "a city at night"]
RULES = {
    "magnitude": lambda: MagnitudeRule("layer"),
    "wanda": lambda: WandaRule("row"),
    "sparsegpt": lambda: SparseGPTRule(blocksize=32),
    "owl": lambda: OwlRule("wanda", outlier_threshold=3.0, lam=0.1),
}


pytestmark = pytest.mark.usefixtures("single_thread")


def calibration(**overrides) -> SimpleNamespace:
    cal = CalibrationConfig(prompts=2, steps=3, guidance_scale=7.5, seed=0, batch_size=2)
    for key, value in overrides.items():
        setattr(cal, key, value)
    return cal


def config(sequential: bool = False, **calibration_overrides) -> SimpleNamespace:
    return SimpleNamespace(calibration=calibration(**calibration_overrides), sequential=sequential)


def pipeline():
    return build_tiny_pipeline(0)


def prune(pipe, component: str, method: str, sparsity: float, pattern: str = "unstructured", *, sequential=False):
    spec_type = UNetSparsity if component == "unet" else TextEncoderSparsity
    spec = spec_type(sparsity=sparsity, pattern=pattern)
    rule = RULES[method]()
    result = prune_pipeline_component(
        pipe, component, spec, rule, prompts=PROMPTS[:2], config=config(sequential)
    )
    return select_layers(getattr(pipe, component), spec.exclude), result, rule


# SparseGPT on the U-Net is covered by the 2:4 and sequential tests (its column loop is the slow part)
@pytest.mark.parametrize(
    "method,component,sparsity",
    [(m, c, s) for m in ("magnitude", "wanda", "sparsegpt") for c, s in (("unet", 0.35), ("text_encoder", 0.475))
     if (m, c) != ("sparsegpt", "unet")],
)
def test_realised_sparsity_equals_request_per_layer(method, component, sparsity):
    pipe = pipeline()
    layers, result, _ = prune(pipe, component, method, sparsity)
    assert layers and all(t.sparsity == sparsity for t in result.targets.values())
    for layer in layers:
        assert int((layer.weight == 0).sum()) == prune_count(layer.numel, sparsity), layer.name
    assert any(layer.is_conv for layer in layers) == (component == "unet")


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "owl"])
def test_two_four_pattern_in_every_group(method):
    pipe = pipeline()
    layers, result, _ = prune(pipe, "unet", method, 0.5, "2:4")
    assert not result.skipped
    keeps = []
    for layer in layers:
        target = result.targets[layer.name]
        keep = target.nm[0] if target.nm else 4  # OWL may leave a layer dense (4 of 4)
        zeros = (layer.matrix().reshape(layer.rows, -1, 4) == 0).sum(-1)
        assert torch.all(zeros == 4 - keep), layer.name
        keeps.append(keep)
    if method == "owl":
        sizes = [layer.numel for layer in layers]
        mean_keep = sum(k * n for k, n in zip(keeps, sizes)) / sum(sizes)
        assert mean_keep == pytest.approx(2, abs=0.05)
    else:
        assert set(keeps) == {2}


def test_conv_groups_run_along_input_channels():
    pipe = pipeline()
    layers, _, _ = prune(pipe, "unet", "magnitude", 0.5, "2:4")
    conv = next(layer for layer in layers if layer.is_conv and layer.weight.shape[2] == 3)
    w = conv.weight.detach()  # (out, in, kh, kw): groups of 4 consecutive input channels per tap
    zeros = (w.reshape(w.shape[0], w.shape[1] // 4, 4, 3, 3) == 0).sum(2)
    assert torch.all(zeros == 2)


def test_owl_layer_sparsities_average_to_target_and_follow_outliers():
    pipe = pipeline()
    layers = select_layers(pipe.unet, ["conv_in", "conv_out"])
    # plant outliers: one layer gets a few huge weights, so more of its scores exceed M x mean
    with torch.no_grad():
        loud = layers[5].weight
        loud.view(-1)[:: max(1, loud.numel() // 200)] *= 40
    _, result, rule = prune(pipe, "unet", "owl", 0.35)
    sizes = {layer.name: layer.numel for layer in layers}
    targets = {name: t.sparsity for name, t in result.targets.items()}
    weighted = sum(targets[n] * sizes[n] for n in sizes) / sum(sizes.values())
    assert weighted == pytest.approx(0.35, abs=1e-6)
    assert len(set(targets.values())) > 1
    ratios = rule.outlier_ratios
    assert ratios[layers[5].name] == max(ratios.values())
    assert targets[layers[5].name] == min(targets.values())
    order = sorted(sizes, key=lambda n: ratios[n])
    assert all(targets[a] >= targets[b] - 1e-12 for a, b in zip(order, order[1:]))
    for layer in layers:  # and each layer is pruned to its own target
        assert int((layer.weight == 0).sum()) == prune_count(layer.numel, targets[layer.name])
    whole = sum(int((la.weight == 0).sum()) for la in layers) / sum(sizes.values())
    assert whole == pytest.approx(0.35, abs=1e-3)


def test_owl_mixed_nm_keeps_stay_near_the_pattern():
    keeps = mixed_nm_keeps([0.3, 0.5, 0.7, 0.55], 4, 2, [1.0, 1.0, 1.0, 1.0])
    # ideal keeps 2.8, 2.0, 1.2, 1.8: floors sum to 6, the two largest remainders round up to reach 8
    assert keeps == [3, 2, 1, 2]
    assert mixed_nm_keeps([0.99, 0.0], 4, 2, [1.0, 1.0]) == [1, 4]  # clamped to 1..M


def test_magnitude_global_scope_shares_one_threshold():
    pipe = pipeline()
    layers = select_layers(pipe.text_encoder)
    with torch.no_grad():
        layers[0].weight.mul_(10)  # a loud layer keeps more under one global threshold
    prune_component(layers, MagnitudeRule("global"), sparsity=0.5)
    zeros = [int((la.weight == 0).sum()) for la in layers]
    total = sum(la.numel for la in layers)
    assert sum(zeros) == prune_count(total, 0.5)
    assert zeros[0] / layers[0].numel < 0.15 < 0.5 < zeros[1] / layers[1].numel
    dense = select_layers(pipeline().text_encoder)
    with torch.no_grad():
        dense[0].weight.mul_(10)
    pruned = torch.cat([d.weight.abs().reshape(-1)[(la.weight == 0).reshape(-1)] for d, la in zip(dense, layers)])
    kept = torch.cat([d.weight.abs().reshape(-1)[(la.weight != 0).reshape(-1)] for d, la in zip(dense, layers)])
    assert pruned.max() <= kept.min()


def test_unet_calibration_spans_timesteps_with_guidance():
    pipe = pipeline()
    seen = []
    handle = pipe.unet.register_forward_pre_hook(
        lambda mod, args, kwargs: seen.append((args[0].shape[0], float(args[1]))), with_kwargs=True
    )
    component_feed(pipe, "unet", PROMPTS[:2], config(steps=3))()
    handle.remove()
    assert len(seen) == 3  # one U-Net call per denoising step, for the batch of 2 prompts
    assert {batch for batch, _ in seen} == {4}  # conditional + unconditional halves
    assert len({t for _, t in seen}) == 3


def _unet_norms(pipe, seed: int) -> torch.Tensor:
    conv = pipe.unet.down_blocks[0].resnets[0].conv1
    feed = PipelineFeed(pipe, PROMPTS[:2], steps=2, guidance_scale=7.5, seed=seed, batch_size=2)
    with capture_inputs({"conv1": conv}, "norms") as stats:
        feed()
    return stats["conv1"].result()


def test_calibration_is_reproducible_and_seeded():
    pipe = pipeline()
    first, again, other = _unet_norms(pipe, 0), _unet_norms(pipe, 0), _unet_norms(pipe, 1)
    assert torch.equal(first, again)
    assert not torch.allclose(first, other)


def test_text_encoder_feed_includes_the_empty_prompt():
    pipe = pipeline()
    fc = next(la.module for la in select_layers(pipe.text_encoder) if la.name.endswith("layers.0.mlp.fc1"))
    rows = {}
    for with_empty in (False, True):
        with capture_inputs({"fc1": fc}, "norms") as stats:
            TextEncoderFeed(pipe, PROMPTS[:3], batch_size=2, with_empty=with_empty)()
        rows[with_empty] = stats["fc1"].rows
    length = pipe.tokenizer.model_max_length
    assert rows == {False: 3 * length, True: 4 * length}


def test_sequential_sparsegpt_recaptures_after_each_block():
    one_shot, sequential = pipeline(), pipeline()
    layers_a, result_a, _ = prune(one_shot, "text_encoder", "sparsegpt", 0.5, sequential=False)
    layers_b, result_b, _ = prune(sequential, "text_encoder", "sparsegpt", 0.5, sequential=True)
    assert result_a.passes == 1 and result_b.passes == 2  # one pass per encoder layer
    first = [n for n, _ in enumerate(layers_a) if ".layers.0." in layers_a[n].name]
    later = [n for n, _ in enumerate(layers_a) if ".layers.1." in layers_a[n].name]
    # block 0 sees dense inputs either way; block 1 sees block 0's pruned outputs only when sequential
    assert all(torch.equal(layers_a[i].weight, layers_b[i].weight) for i in first)
    assert not all(torch.equal(layers_a[i].weight, layers_b[i].weight) for i in later)


def test_sequential_units_follow_execution_order():
    pipe = pipeline()
    layers, result, _ = prune(pipe, "unet", "sparsegpt", 0.35, sequential=True)
    assert result.passes == len(result.units) == len({unit_of(layer.name) for layer in layers})
    first = [next(i for i, u in enumerate(result.units) if u.startswith(p)) for p in ("down_blocks", "mid_block", "up_blocks")]
    assert first == sorted(first)  # the U-Net registers up_blocks before mid_block; tracing fixes that
    assert result.units[0] == "time_embedding"
    for layer in layers:
        assert int((layer.weight == 0).sum()) == prune_count(layer.numel, 0.35)


def test_zero_sparsity_component_is_untouched_and_nm_needs_divisible_columns():
    pipe = pipeline()
    before = {k: v.clone() for k, v in pipe.unet.state_dict().items()}
    prune_pipeline_component(pipe, "unet", UNetSparsity(sparsity=0.0), WandaRule(), prompts=PROMPTS, config=config())
    assert all(torch.equal(before[k], v) for k, v in pipe.unet.state_dict().items())
    odd = PrunableLayer("odd", torch.nn.Linear(6, 4))
    result = prune_component([odd], MagnitudeRule(), sparsity=0.5, pattern="2:4")
    assert "odd" in result.skipped and int((odd.weight == 0).sum()) == 0
    assert parse_pattern("2:4") == (2, 4)


def test_conv_matrix_view_and_statistics_share_one_column_order():
    conv = torch.nn.Conv2d(8, 6, 3, padding=1)
    layer = PrunableLayer("conv", conv)
    x = torch.randn(2, 8, 5, 5)
    rows = torch.cat(list(input_rows(conv, x)))[:, layer.column_order()]  # pruning order
    out = (conv(x) - conv.bias.reshape(1, -1, 1, 1)).permute(0, 2, 3, 1).reshape(-1, 6)
    assert torch.allclose(rows @ layer.matrix().T, out, atol=1e-5)
    with capture_inputs({"conv": conv}, "hessian") as stats:
        conv(x)
    assert torch.allclose(layer.reorder_statistic(stats["conv"].result()), 2 * rows.T @ rows / rows.shape[0], atol=1e-4)
    with capture_inputs({"conv": conv}, "norms") as stats:
        conv(x)
    assert torch.allclose(layer.reorder_statistic(stats["conv"].result()), rows.norm(dim=0), atol=1e-5)
    # the view round-trips, and N:M groups of the matrix are 4 input channels at one kernel tap
    before = conv.weight.detach().clone()
    layer.assign(layer.matrix())
    assert torch.equal(conv.weight, before)
    assert torch.equal(layer.matrix()[:, :8], before[:, :, 0, 0])


def test_a_layer_that_never_runs_is_reported():
    pipe = pipeline()
    pipe.unet.add_module("unused", torch.nn.Linear(8, 8))  # registered, never called in forward
    with pytest.raises(PrunekitError, match="never ran during calibration.*unused"):
        prune(pipe, "unet", "wanda", 0.35)
