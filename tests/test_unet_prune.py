"""Physical pruning: the pruned stock U-Net equals the gated model under the same hard mask."""

from __future__ import annotations

import pytest
import torch
from diffusers import UNet2DConditionModel
from unet_helpers import (
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

from prunekit.unet import make_prunable, physically_prune, round_mask
from prunekit.unet.pruned_modules import (
    AttentionBiasOnly,
    FeedForwardBiasOnly,
    ResnetShortcutOnly,
    SkippedResnet,
    SkippedTransformer,
)

pytestmark = pytest.mark.usefixtures("single_thread")


def _masks(prunable) -> dict[str, torch.Tensor]:
    return {
        "random_0.8": random_mask(prunable, 0.8, 11),
        "random_0.4": random_mask(prunable, 0.4, 12),
        "drop_blocks": block_dropping_mask(prunable, 13),
        "one_unit_per_layer": one_unit_per_layer_mask(prunable),
        "zero_width_layers": zero_width_mask(prunable, 14),
    }


def _assert_pruned_equals_gated(prunable, config, mask) -> torch.nn.Module:
    pruned = physically_prune(prunable, mask).eval()
    args, kwargs = inputs(config, batch=2)
    with torch.no_grad():
        gated = prunable(*args, gates=mask.float(), **kwargs).sample
        out = pruned(*args, **kwargs).sample
    assert isinstance(pruned, UNet2DConditionModel)
    assert (out - gated).abs().max().item() <= 1e-4
    return pruned


@pytest.mark.parametrize("config,depth", [(TINY_SD2, "aptp"), (TINY_SD2, None), (TINY_SD1, "aptp"), (TINY_SDXL, "aptp")],
                         ids=["sd2", "sd2-no-depth", "sd1", "sdxl"])
def test_pruned_equals_gated(config, depth):
    prunable = make_prunable(build_unet(config), depth=depth)
    dense_params = sum(p.numel() for p in prunable.unet.parameters())
    for name, mask in _masks(prunable).items():
        pruned = _assert_pruned_equals_gated(prunable, config, mask)
        assert sum(p.numel() for p in pruned.parameters()) < dense_params, name
    prunable.restore()


def test_pruned_structure():
    prunable = make_prunable(build_unet(TINY_SD2))
    unet = prunable.unet
    mask = one_unit_per_layer_mask(prunable)
    pruned = physically_prune(prunable, mask)
    resnet = pruned.down_blocks[0].resnets[0]
    assert resnet.conv1.out_channels == 4 and resnet.norm2.num_groups == 1 and resnet.conv2.in_channels == 4
    assert resnet.time_emb_proj.out_features == 4
    attn = pruned.down_blocks[0].attentions[0].transformer_blocks[0].attn2
    assert attn.heads == 1 and attn.to_q.out_features == 16 and attn.to_k.in_features == 32
    ff = pruned.down_blocks[0].attentions[0].transformer_blocks[0].ff
    assert ff.net[0].proj.out_features == 2 * 4 and ff.net[2].in_features == 4
    # weights are slices of the dense ones, never re-initialised
    layer = prunable.inventory.layer("down_blocks.0.resnets.0", "resnet_group")
    kept = int(mask[layer.start:layer.stop].nonzero()[0]) * layer.size
    assert torch.equal(resnet.conv1.weight, unet.down_blocks[0].resnets[0].conv1.weight[kept:kept + 4])
    assert torch.equal(resnet.conv2.weight, unet.down_blocks[0].resnets[0].conv2.weight[:, kept:kept + 4])

    drop = torch.ones(prunable.num_units, dtype=torch.bool)
    drop[prunable.depth_indices] = False
    skipped = physically_prune(prunable, drop)
    assert isinstance(skipped.down_blocks[0].resnets[1], SkippedResnet)
    assert skipped.up_blocks[0].resnets[2].identity_channels == 64
    assert isinstance(skipped.up_blocks[1].attentions[2], SkippedTransformer)
    assert not any(k.startswith("down_blocks.0.attentions.1.") for k in skipped.state_dict())

    empty = physically_prune(prunable, zero_width_mask(prunable, 3))
    kinds = {type(m) for m in empty.modules()}
    assert {ResnetShortcutOnly, AttentionBiasOnly, FeedForwardBiasOnly} <= kinds
    prunable.restore()


def test_does_not_modify_or_share_with_the_input():
    unet = build_unet(TINY_SD2)
    before = {k: v.clone() for k, v in unet.state_dict().items()}
    modules_before = [type(m) for m in unet.modules()]
    # A stock U-Net works as input too (unit layout from depth/ffn_groups); the mask comes from a twin.
    twin = make_prunable(build_unet(TINY_SD2, seed=1))
    mask = block_dropping_mask(twin, 5)
    pruned = physically_prune(unet, mask, depth="aptp")
    assert [type(m) for m in unet.modules()] == modules_before
    after = unet.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    with torch.no_grad():
        for p in pruned.parameters():
            p.add_(1.0)
    assert all(torch.equal(before[k], unet.state_dict()[k]) for k in before)
    assert all(p.requires_grad for p in pruned.parameters())
    with torch.no_grad():
        for p in pruned.parameters():
            p.sub_(1.0)
    _assert_pruned_equals_gated(make_prunable(unet), TINY_SD2, mask)


def test_round_to_gives_multiples_and_matches_gated_adjusted_mask():
    prunable = make_prunable(build_unet(TINY_SD2))
    mask = random_mask(prunable, 0.5, 21)
    scores = torch.rand(prunable.num_units, generator=torch.Generator().manual_seed(0))
    adjusted = round_mask(prunable, mask, 8, scores=scores)
    assert bool((adjusted | ~mask).all()), "rounding only adds units back"
    assert adjusted.sum() > mask.sum()
    for layer in prunable.inventory.width_layers:
        k, k_old = int(adjusted[layer.start:layer.stop].sum()), int(mask[layer.start:layer.stop].sum())
        assert (k * layer.size) % 8 == 0 or k == layer.count
        if k > k_old:  # the added units are the best-scored dropped ones
            added = (adjusted & ~mask)[layer.start:layer.stop]
            still_dropped = ~adjusted[layer.start:layer.stop]
            s = scores[layer.start:layer.stop]
            if still_dropped.any():
                assert s[added].min() >= s[still_dropped].max()
    pruned = physically_prune(prunable, mask, round_to=8, scores=scores)
    widths = [m.out_features for m in pruned.modules() if isinstance(m, torch.nn.Linear)]
    widths += [m.out_channels for m in pruned.modules() if isinstance(m, torch.nn.Conv2d) and m is not pruned.conv_out]
    assert all(w % 8 == 0 for w in widths)
    args, kwargs = inputs(TINY_SD2)
    with torch.no_grad():
        torch.testing.assert_close(pruned(*args, **kwargs).sample,
                                   prunable(*args, gates=adjusted.float(), **kwargs).sample, atol=1e-4, rtol=0)
    prunable.restore()


def test_bad_masks_are_rejected():
    prunable = make_prunable(build_unet(TINY_SD2))
    with pytest.raises(ValueError, match="shape"):
        physically_prune(prunable, torch.ones(prunable.num_units - 1))
    with pytest.raises(ValueError, match="round_to"):
        round_mask(prunable, torch.ones(prunable.num_units), 0)
    mask = one_unit_per_layer_mask(prunable)
    narrower = physically_prune(prunable, mask)
    with pytest.raises(ValueError, match="already pruned"):
        physically_prune(narrower, torch.ones(prunable.num_units))
    modified = build_unet(TINY_SD2)  # a stock U-Net whose modules no longer match its config
    modified.conv_in = torch.nn.Conv2d(4, 16, 3, padding=1)
    with pytest.raises(ValueError, match="does not match a U-Net built from its config"):
        physically_prune(modified, torch.ones(prunable.num_units))
    prunable.restore()
