"""Transformer denoisers (PixArt, SD3, Flux): gated == physically pruned, exact MACs, save / load, and
the published configs on the meta device."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformer_helpers import FFN_GROUPS, LATENT, TEXT_LEN, build, call, inputs, masks, model_class, sample

import prunekit
from prunekit import denoisers
from prunekit.transformer import (
    PUBLISHED,
    PrunableTransformer,
    macs_by_op,
    make_prunable,
    measure_macs,
    physically_prune,
)
from prunekit.transformer.pruned_modules import JointAttentionBiasOnly, NoHeads, SkippedBlock
from prunekit.unet.pruned_modules import AttentionBiasOnly, FeedForwardBiasOnly

pytestmark = pytest.mark.usefixtures("single_thread")
FAMILIES = ["pixart", "sd3", "flux"]


@pytest.fixture(scope="module", params=FAMILIES)
def family(request: pytest.FixtureRequest) -> str:
    return request.param


@pytest.fixture(scope="module")
def prunable(family: str) -> PrunableTransformer:
    return make_prunable(build(family), ffn_groups=FFN_GROUPS)


def _pruned_forward(pruned: torch.nn.Module, kwargs: dict) -> torch.Tensor:
    with torch.no_grad():
        return pruned(**kwargs).sample


def test_pruned_equals_gated(prunable: PrunableTransformer, family: str) -> None:
    kwargs = inputs(prunable.model)
    dense_params = sum(p.numel() for p in prunable.model.parameters())
    with torch.no_grad():
        dense = call(prunable, kwargs)
    for name, mask in masks(prunable, family).items():
        pruned = physically_prune(prunable, mask).eval()
        with torch.no_grad():
            gated = call(prunable, kwargs, mask.float())
        assert (gated - dense).abs().max().item() > 1e-3, name  # the mask changes the output
        assert (_pruned_forward(pruned, kwargs) - gated).abs().max().item() <= 1e-4, name
        assert isinstance(pruned, model_class(family))
        assert sum(p.numel() for p in pruned.parameters()) < dense_params, name
        if name == "drop_blocks":
            assert sum(isinstance(m, SkippedBlock) for m in pruned.modules()) == len(prunable.depth_indices[::2])
        if name == "zero_width":
            kinds = {type(m) for m in pruned.modules()}
            expected = {"pixart": {AttentionBiasOnly, FeedForwardBiasOnly},
                        "sd3": {JointAttentionBiasOnly, AttentionBiasOnly, FeedForwardBiasOnly},
                        "flux": {JointAttentionBiasOnly, NoHeads, FeedForwardBiasOnly}}[family]
            assert expected <= kinds


def test_per_sample_gates_match_per_sample_experts(prunable: PrunableTransformer, family: str) -> None:
    all_masks = masks(prunable, family)
    pair = torch.stack([all_masks["random_0.7"], all_masks["drop_blocks"]]).float()
    kwargs = inputs(prunable.model)
    with torch.no_grad():
        gated = call(prunable, kwargs, pair)
    for i in range(2):
        expert = physically_prune(prunable, pair[i]).eval()
        assert (_pruned_forward(expert, sample(kwargs, i)) - gated[i:i + 1]).abs().max().item() <= 1e-4


def test_mac_model_matches_flop_counter(prunable: PrunableTransformer, family: str) -> None:
    mac = prunable.mac_model(height=LATENT, width=LATENT, text_len=TEXT_LEN)
    dense = measure_macs(prunable.model, height=LATENT, width=LATENT, text_len=TEXT_LEN)
    assert mac.dense == pytest.approx(dense, rel=1e-9)
    # Attention matmuls are counted (by the SDPA formula on CPU, or as bmm on meta / fake tensors).
    by_op = macs_by_op(prunable.model, height=LATENT, width=LATENT, text_len=TEXT_LEN)
    attention = sum(v for op, v in by_op.items() if "attention" in op or "bmm" in op)
    assert attention > 0.05 * dense
    for name, mask in masks(prunable, family).items():
        pruned = physically_prune(prunable, mask)
        measured = measure_macs(pruned, height=LATENT, width=LATENT, text_len=TEXT_LEN)
        assert float(mac(mask.float())) == pytest.approx(measured, rel=0.01), name
        assert measured < dense, name


def test_gates_are_differentiable_and_checkpointing_keeps_them(family: str) -> None:
    model = build(family)
    prunable = make_prunable(model, ffn_groups=FFN_GROUPS)
    kwargs = inputs(model)
    gates = torch.full((prunable.num_units,), 0.7, requires_grad=True)
    mac = prunable.mac_model(height=LATENT, width=LATENT, text_len=TEXT_LEN)
    mac(gates).backward()
    assert gates.grad is not None and (gates.grad > 0).all()
    grads = []
    for checkpointing in (False, True):
        if checkpointing:
            model.enable_gradient_checkpointing()
        g = gates.detach().clone().requires_grad_(True)
        call(prunable, kwargs, g).square().mean().backward()
        assert g.grad is not None
        grads.append(g.grad)
    assert (grads[0] != 0).float().mean() > 0.9
    assert torch.allclose(grads[0], grads[1], atol=1e-6, rtol=1e-4)
    assert prunable.restore() is model and not prunable._handles


def test_save_load_roundtrip_and_stock_class_refuses(prunable: PrunableTransformer, family: str, tmp_path) -> None:
    mask = masks(prunable, family)["zero_width"]
    mask[prunable.depth_indices[1]] = False  # a dropped block too: the folder then lacks its keys
    pruned = physically_prune(prunable, mask).eval()
    pruned.save_pretrained(tmp_path)
    cls = type(pruned)
    assert getattr(prunekit, cls.__name__) is cls  # the name a pipeline's model_index.json uses
    loaded = cls.from_pretrained(tmp_path).eval()
    kwargs = inputs(prunable.model)
    assert torch.equal(_pruned_forward(loaded, kwargs), _pruned_forward(pruned, kwargs))
    assert torch.equal(loaded.keep_mask, mask)
    as_json = lambda config: json.loads(json.dumps(config))  # noqa: E731 (tuples come back as lists)
    assert as_json(loaded.dense_config) == as_json(pruned.dense_config)
    assert as_json(loaded.dense_config) == as_json({k: v for k, v in prunable.config.items() if not k.startswith("_")})
    with pytest.raises(Exception) as refused:
        model_class(family).from_pretrained(tmp_path)
    if family != "flux":  # Flux validates no argument; its refusal is a TypeError on the marker
        assert "PrunedByPrunekit" in str(refused.value)


def test_dispatch_picks_the_implementation(prunable: PrunableTransformer, family: str) -> None:
    from diffusers.models import UNet2DConditionModel
    from unet_helpers import TINY_SD2, build_unet

    from prunekit.unet import PrunableUNet, PrunedUNet2DConditionModel

    assert denoisers.denoiser_kind(prunable) == "transformer"
    gated = denoisers.make_prunable(prunable.model, ffn_groups=FFN_GROUPS)
    assert isinstance(gated, PrunableTransformer) and gated.num_units == prunable.num_units
    no_depth = denoisers.make_prunable(prunable.model, depth="none", ffn_groups=FFN_GROUPS)
    assert len(no_depth.depth_indices) == 0
    no_depth.restore()
    gated.restore()
    mask = masks(prunable, family)["random_0.7"]
    expert = denoisers.physically_prune(prunable, mask)
    assert denoisers.measure_macs(expert, height=LATENT, width=LATENT, text_len=TEXT_LEN) == \
        measure_macs(expert, height=LATENT, width=LATENT, text_len=TEXT_LEN)
    if family == "pixart":  # the U-Net side, once
        unet = build_unet(TINY_SD2)
        prunable_unet = denoisers.make_prunable(unet)
        assert isinstance(prunable_unet, PrunableUNet) and isinstance(unet, UNet2DConditionModel)
        unet_mask = torch.ones(prunable_unet.num_units, dtype=torch.bool)
        unet_mask[0] = False
        assert isinstance(denoisers.physically_prune(prunable_unet, unet_mask), PrunedUNet2DConditionModel)


def test_unprunable_models_are_refused() -> None:
    with pytest.raises(ValueError, match="not a supported transformer"):
        make_prunable(torch.nn.Linear(2, 2))
    with pytest.raises(ValueError, match="not a supported transformer"):
        denoisers.make_prunable(torch.nn.Linear(2, 2))
    # A q norm over all heads at once would change when a head is removed.
    model = build("sd3")
    model.transformer_blocks[1].attn.norm_q = torch.nn.RMSNorm(32)
    with pytest.raises(ValueError, match="across heads"):
        make_prunable(model)
    fused = build("sd3")
    fused.fuse_qkv_projections()
    with pytest.raises(ValueError, match="fused"):
        make_prunable(fused)


# --- published configs on the meta device --------------------------------------------------------

def _per_unit_macs(name: str) -> dict[str, float]:
    """Hand-derived MACs of one unit at native resolution (1024 px: 64x64 = 4096 image tokens)."""
    n = 4096
    if name.startswith("PixArt"):
        t, d, hd, s = 300, 1152, 72, 4 * 1152 // 32
        return {"transformer_blocks.0.attn1": 4 * n * d * hd + 2 * n * n * hd,
                "transformer_blocks.0.attn2": 2 * n * d * hd + 2 * t * d * hd + 2 * n * t * hd,
                "transformer_blocks.0.ff": 2 * n * d * s, "depth:transformer_blocks.0": 0}
    if name.startswith("SD3"):
        t, d, hd, s = 333, 1536, 64, 4 * 1536 // 32
        seq = n + t
        return {"transformer_blocks.0.attn": 4 * seq * d * hd + 2 * seq * seq * hd,
                # context_pre_only: the text stream has no output projection
                "transformer_blocks.23.attn": 3 * seq * d * hd + n * hd * d + 2 * seq * seq * hd,
                "transformer_blocks.0.attn2": 4 * n * d * hd + 2 * n * n * hd,
                "transformer_blocks.0.ff": 2 * n * d * s, "transformer_blocks.0.ff_context": 2 * t * d * s,
                # adaLN modulation of one timestep vector: 9d (dual attention) + 6d outputs
                "depth:transformer_blocks.0": 15 * d * d}
    t, d, hd, s = 512, 3072, 128, 4 * 3072 // 32
    seq = n + t
    return {"transformer_blocks.0.attn": 4 * seq * d * hd + 2 * seq * seq * hd,
            "transformer_blocks.0.ff": 2 * n * d * s, "transformer_blocks.0.ff_context": 2 * t * d * s,
            # q/k/v rows plus the head's proj_out columns
            "single_transformer_blocks.0.attn": 4 * seq * d * hd + 2 * seq * seq * hd,
            "single_transformer_blocks.0.proj_mlp": 2 * seq * d * s,
            "depth:transformer_blocks.0": 12 * d * d, "depth:single_transformer_blocks.0": 3 * d * d}


EXPECTED_UNITS = {
    "PixArt": 28 * (16 + 16 + 32) + 28,
    "SD3": 24 * 24 + 13 * 24 + 24 * 32 + 23 * 32 + 24,
    "FLUX": 19 * (24 + 32 + 32) + 38 * (24 + 32) + 19 + 38,
}


@pytest.mark.parametrize("published", PUBLISHED, ids=[p.name for p in PUBLISHED])
def test_published_configs_on_meta(published) -> None:
    from diffusers import models

    with torch.device("meta"):
        model = getattr(models, published.class_name)(**published.config)
    prunable = make_prunable(model)
    assert prunable.num_units == next(v for k, v in EXPECTED_UNITS.items() if published.name.startswith(k))
    mac = prunable.mac_model(height=published.latent, width=published.latent, text_len=published.text_len)
    for key, expected in _per_unit_macs(published.name).items():
        if key.startswith("depth:"):
            layer = prunable.inventory.layer(key[len("depth:"):], "depth_transformer")
            assert float(mac.depth_const[layer.start]) == pytest.approx(expected, rel=1e-9), key
            continue
        layer = next(layer for layer in prunable.inventory.width_layers if layer.path == key)
        assert float(mac.coef[layer.start]) == pytest.approx(expected, rel=1e-9), key
    assert math.isfinite(mac.dense) and mac.dense > 1e12


def test_round_to_keeps_multiples_and_matches_gated(prunable: PrunableTransformer, family: str) -> None:
    from prunekit.transformer import round_mask

    mask = masks(prunable, family)["random_0.4"]
    rounded = round_mask(prunable, mask, 16)
    assert (rounded | ~mask).all()  # only adds units back
    for layer in prunable.inventory.width_layers:
        kept = int(rounded[layer.start:layer.stop].sum())
        assert kept * layer.size % 16 == 0 or kept == layer.count
    pruned = physically_prune(prunable, mask, round_to=16).eval()
    kwargs = inputs(prunable.model)
    with torch.no_grad():
        gated = call(prunable, kwargs, rounded.float())
    assert (_pruned_forward(pruned, kwargs) - gated).abs().max().item() <= 1e-4
    assert pruned.pruning["round_to"] == 16
