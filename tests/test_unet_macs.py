"""The MAC model against FlopCounterMode measured on physically pruned models."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from torch.utils.flop_counter import FlopCounterMode
from unet_helpers import (
    LATENT,
    TEXT_LEN,
    TINY_SD1,
    TINY_SD2,
    TINY_SDXL,
    block_dropping_mask,
    build_unet,
    inputs,
    one_unit_per_layer_mask,
    random_mask,
    zero_width_mask,
)

from prunekit.unet import (
    count_macs,
    flop_counter_mode,
    make_prunable,
    measure_macs,
    paper_convention_macs,
    physically_prune,
    sd21_unet_config,
)
from prunekit.unet.macs import example_inputs

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def sd21_meta():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd21_unet_config())
    prunable = make_prunable(unet)
    yield prunable
    prunable.restore()


def _masks(prunable) -> list[torch.Tensor]:
    return [random_mask(prunable, 0.7, 1), random_mask(prunable, 0.3, 2), block_dropping_mask(prunable, 3),
            one_unit_per_layer_mask(prunable), zero_width_mask(prunable, 4)]


@pytest.mark.parametrize("config", [TINY_SD2, TINY_SD1, TINY_SDXL], ids=["sd2", "sd1", "sdxl"])
def test_mac_model_equals_flop_counter_on_pruned_models(config):
    prunable = make_prunable(build_unet(config))
    mac_model = prunable.mac_model(height=LATENT, width=LATENT, text_len=TEXT_LEN)
    args, kwargs = inputs(config, batch=1)
    for mask in _masks(prunable):
        pruned = physically_prune(prunable, mask)
        with torch.no_grad(), flop_counter_mode() as counter:  # a real CPU forward of the pruned model
            pruned(*args, **kwargs)
        measured = counter.get_total_flops() / 2
        predicted = float(mac_model(mask.float()))
        assert predicted == pytest.approx(measured, rel=1e-6)
    prunable.restore()


def test_cpu_attention_is_counted_like_torchs_own_sdpa_formula():
    # On meta tensors SDPA decomposes into bmm, which plain FlopCounterMode counts; on CPU it calls a
    # flash kernel without a formula. flop_counter_mode must give the same count for both.
    unet = build_unet(TINY_SD2)
    args, kwargs = inputs(TINY_SD2, batch=1)
    with torch.no_grad(), flop_counter_mode() as cpu_counter:
        unet(*args, **kwargs)
    with torch.device("meta"):
        meta_unet = UNet2DConditionModel(**TINY_SD2)
    meta_args, meta_kwargs = example_inputs(meta_unet, height=LATENT, width=LATENT, text_len=TEXT_LEN)
    with FlopCounterMode(display=False) as meta_counter:
        meta_unet(*meta_args, **meta_kwargs)
    assert cpu_counter.get_total_flops() == meta_counter.get_total_flops()
    assert any("bmm" in str(op) for op in meta_counter.get_flop_counts()["Global"])


def test_sd21_on_meta_matches_flop_counter(sd21_meta):
    for size in (32, 16):
        mac_model = sd21_meta.mac_model(height=size, width=size)
        for mask in _masks(sd21_meta)[:4] if size == 32 else _masks(sd21_meta)[2:]:
            pruned = physically_prune(sd21_meta, mask)
            assert next(pruned.parameters()).is_meta
            args, kwargs = example_inputs(pruned, height=size, width=size, text_len=77)
            with FlopCounterMode(display=False) as counter:  # plain FlopCounterMode; meta tensors
                pruned(*args, **kwargs)
            assert float(mac_model(mask.float())) == pytest.approx(counter.get_total_flops() / 2, rel=1e-6)


def test_sd21_dense_reference_numbers(sd21_meta):
    dense_96 = sd21_meta.mac_model(height=96, width=96).dense
    assert dense_96 / 1e9 == pytest.approx(1074.553, abs=0.01)
    assert sd21_meta.mac_model(height=32, width=32).dense / 1e9 == pytest.approx(90.545, abs=0.01)
    paper = paper_convention_macs(sd21_meta.unet, height=96, width=96)
    # Convolutions + linear layers alone: what FlopCounterMode reports on CPU without an SDPA formula.
    assert (paper["conv"] + paper["linear"]) / 1e9 == pytest.approx(760.486, abs=0.01)
    assert paper["attention_true"] + paper["conv"] + paper["linear"] == pytest.approx(dense_96, rel=1e-9)
    # The paper's convention (query length for cross-attention, elementwise ops) lands near 1384.2 G.
    assert paper["total_paper_convention"] / 1e9 == pytest.approx(1384.2, rel=0.003)


def test_cross_attention_uses_the_text_length():
    prunable = make_prunable(build_unet(TINY_SD2))
    short = prunable.mac_model(height=LATENT, width=LATENT, text_len=7).dense
    long = prunable.mac_model(height=LATENT, width=LATENT, text_len=77).dense
    expected = 0
    for layer in prunable.inventory.width_layers:
        if layer.path.endswith("attn2"):
            attn = prunable.unet.get_submodule(layer.path)
            level = 0 if layer.path.startswith(("down_blocks.0", "up_blocks.1")) else 1
            queries = (LATENT // 2 ** level) ** 2
            inner = attn.to_q.out_features
            # to_k + to_v on every extra token, and both attention matmuls over the extra keys
            expected += 70 * (2 * attn.to_k.in_features * inner + 2 * queries * inner)
    assert long - short == expected
    prunable.restore()


def test_coefficients_match_hand_counts():
    prunable = make_prunable(build_unet(TINY_SD2))
    mac_model = prunable.mac_model(height=LATENT, width=LATENT, text_len=TEXT_LEN)
    resnet = prunable.inventory.layer("down_blocks.0.resnets.0", "resnet_group")
    size, hw = resnet.size, LATENT * LATENT
    # conv1 (32 -> size, 3x3), time_emb_proj (128 -> size), conv2 (size -> 32, 3x3), per group
    assert mac_model.coef[resnet.start] == hw * 9 * 32 * size + 128 * size + hw * 9 * size * 32
    head = prunable.inventory.layer("down_blocks.0.attentions.0.transformer_blocks.0.attn2", "attn_head")
    d = head.size
    expected = hw * 32 * d + 2 * TEXT_LEN * 32 * d + 2 * hw * TEXT_LEN * d + hw * d * 32
    assert mac_model.coef[head.start] == expected
    ff = prunable.inventory.layer("down_blocks.0.attentions.0.transformer_blocks.0.ff", "ffn_group")
    assert mac_model.coef[ff.start] == hw * 32 * 2 * ff.size + hw * ff.size * 32
    prunable.restore()


def test_soft_macs_are_differentiable_and_batched(sd21_meta):
    mac_model = sd21_meta.mac_model(height=32, width=32)
    gates = torch.rand(3, sd21_meta.num_units, generator=torch.Generator().manual_seed(0), requires_grad=True)
    macs = mac_model(gates)
    assert macs.shape == (3,) and macs.dtype == torch.float32
    macs.sum().backward()
    assert (gates.grad > 0).all()
    # d MACs / d depth gate = the block's constant + its width units' MACs at the current gates
    single = gates.detach()[0].clone().requires_grad_()
    mac_model(single).backward()
    k = int(sd21_meta.depth_indices[0])
    inner = [layer for layer in sd21_meta.inventory.width_layers if layer.depth_unit == k]
    expected = float(mac_model.depth_const[k]) + sum(
        float((mac_model.coef[layer.start:layer.stop] * single.detach()[layer.start:layer.stop].double()).sum())
        for layer in inner)
    assert float(single.grad[k]) == pytest.approx(expected, rel=1e-5)
    ratio = mac_model.ratio(torch.ones(sd21_meta.num_units))
    assert float(ratio) == pytest.approx(1.0, rel=1e-6)


def test_count_macs_api():
    unet = build_unet(TINY_SD2)
    dense = count_macs(unet, height=LATENT, width=LATENT, text_len=TEXT_LEN)
    prunable = make_prunable(unet)
    assert count_macs(prunable, height=LATENT, width=LATENT, text_len=TEXT_LEN) == pytest.approx(dense, rel=1e-9)
    mask = block_dropping_mask(prunable, 9)
    via_mask = count_macs(prunable, mask, height=LATENT, width=LATENT, text_len=TEXT_LEN)
    assert isinstance(via_mask, float) and via_mask < dense
    pruned = physically_prune(prunable, mask)
    assert count_macs(pruned, height=LATENT, width=LATENT, text_len=TEXT_LEN) == pytest.approx(via_mask, rel=1e-6)
    assert measure_macs(pruned, height=LATENT, width=LATENT, text_len=TEXT_LEN) == pytest.approx(via_mask, rel=1e-6)
    soft = torch.full((prunable.num_units,), 0.5, requires_grad=True)
    value = count_macs(prunable, soft, height=LATENT, width=LATENT, text_len=TEXT_LEN)
    assert isinstance(value, torch.Tensor) and value.ndim == 0 and value.requires_grad
    prunable.restore()
    # a stock U-Net with a mask: the unit layout comes from depth/ffn_groups
    stock = count_macs(unet, mask, height=LATENT, width=LATENT, text_len=TEXT_LEN)
    assert stock == pytest.approx(via_mask, rel=1e-9)
