"""Unit inventory and gated forward of prunekit.unet on stock diffusers U-Nets."""

from __future__ import annotations

from collections import Counter

import pytest
import torch
from diffusers import UNet2DConditionModel
from unet_helpers import TINY_SD1, TINY_SD2, TINY_SDXL, build_unet, inputs, random_mask

from prunekit.unet import make_prunable, sd21_unet_config
from prunekit.unet.gating import _ACTIVE

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def sd2():
    unet = build_unet(TINY_SD2)
    prunable = make_prunable(unet)
    yield prunable
    prunable.restore()


def test_sd21_has_1620_units_on_meta():
    with torch.device("meta"):
        unet = UNet2DConditionModel(**sd21_unet_config())
    prunable = make_prunable(unet)
    kinds = Counter(u.kind for u in prunable.units)
    assert prunable.num_units == 1620
    assert kinds == {"resnet_group": 704, "attn_head": 390, "ffn_group": 512,
                     "depth_resnet": 8, "depth_transformer": 6}
    assert len({u.path for u in prunable.units if u.kind == "resnet_group"}) == 22
    assert len({u.path for u in prunable.units if u.kind == "ffn_group"}) == 16
    assert [u.index for u in prunable.units] == list(range(1620))
    # Paper layout: last ResNet and last Transformer2D of each down/up block.
    assert prunable.inventory.depth[:3] == ("down_blocks.0.resnets.1", "down_blocks.0.attentions.1",
                                            "down_blocks.1.resnets.1")
    assert "up_blocks.3.attentions.2" in prunable.inventory.depth
    assert not any(p.startswith("mid_block") for p in prunable.inventory.depth)
    head = next(u for u in prunable.units if u.kind == "attn_head")
    assert head.path == "down_blocks.0.attentions.0.transformer_blocks.0.attn1" and head.size == 64
    # groups: one index list per width layer, covering every width unit exactly once
    covered = torch.cat(prunable.groups)
    assert torch.equal(covered.sort().values, prunable.width_indices)
    assert len(prunable.groups) == 22 + 32 + 16
    prunable.restore()


def test_depth_none_and_sizes():
    unet = build_unet(TINY_SD2)
    prunable = make_prunable(unet, depth=None)
    kinds = Counter(u.kind for u in prunable.units)
    # 4 down, 2 mid and 6 up resnets with 8 groups each
    assert kinds["resnet_group"] == 12 * 8
    assert kinds["attn_head"] == 2 * 2 * 2 + 2 * 4 + 3 * 2 * 2  # down(2 blocks) + mid + up(3 blocks)
    assert kinds["ffn_group"] == 6 * 32
    assert "depth_resnet" not in kinds and prunable.depth_indices.numel() == 0
    sizes = {(u.path, u.kind): u.size for u in prunable.units}
    assert sizes[("down_blocks.0.resnets.0", "resnet_group")] == 4
    assert sizes[("mid_block.resnets.0", "resnet_group")] == 8
    assert sizes[("down_blocks.0.attentions.0.transformer_blocks.0.attn2", "attn_head")] == 16
    prunable.restore()
    with pytest.raises(ValueError, match="cannot be skipped"):
        make_prunable(unet, depth=["up_blocks.1.resnets.0"])  # h has 64 channels, the output 32


def test_all_ones_equals_stock_and_none_is_stock(sd2):
    args, kwargs = inputs(TINY_SD2)
    with torch.no_grad():
        ref = sd2.unet(*args, **kwargs).sample
        assert torch.equal(sd2(*args, **kwargs).sample, ref)
        out = sd2(*args, gates=sd2.dense_gates(), **kwargs).sample
        half = sd2(*args, gates=torch.full((sd2.num_units,), 0.5), **kwargs).sample
    assert torch.equal(out, ref)
    assert (half - ref).abs().max() > 1e-3  # the gates do act


def test_mixed_gates_equal_each_sample_alone(sd2):
    args, kwargs = inputs(TINY_SD2, batch=3)
    masks = torch.stack([random_mask(sd2, p, seed) for p, seed in ((0.9, 1), (0.5, 2), (0.7, 3))]).float()
    masks[1, sd2.depth_indices[:3]] = 0.0
    soft = masks.clone()
    soft[2] = torch.rand(sd2.num_units, generator=torch.Generator().manual_seed(4))
    for gates in (masks, soft):
        with torch.no_grad():
            together = sd2(*args, gates=gates, **kwargs).sample
            for i in range(3):
                alone = sd2(*(a[i:i + 1] for a in args), gates=gates[i], **kwargs).sample
                torch.testing.assert_close(together[i:i + 1], alone, atol=1e-5, rtol=1e-5)


def test_cfg_batch_tiles_gates(sd2):
    args, kwargs = inputs(TINY_SD2, batch=4)
    gates = torch.stack([random_mask(sd2, 0.6, 5), random_mask(sd2, 0.8, 6)]).float()
    with torch.no_grad():
        tiled = sd2(*args, gates=gates, **kwargs).sample
        explicit = sd2(*args, gates=torch.cat([gates, gates]), **kwargs).sample
    assert torch.equal(tiled, explicit)
    with pytest.raises(ValueError, match="does not divide"):
        sd2(*args, gates=torch.ones(3, sd2.num_units), **kwargs)
    with pytest.raises(ValueError, match="shape"):
        sd2(*args, gates=torch.ones(sd2.num_units + 1), **kwargs)


def test_gradients_reach_every_kind_of_gate(sd2):
    args, kwargs = inputs(TINY_SD2, batch=2)
    gates = torch.full((2, sd2.num_units), 0.7, requires_grad=True)
    sd2(*args, gates=gates, **kwargs).sample.square().mean().backward()
    grad = gates.grad.abs()
    for kind in ("resnet_group", "attn_head", "ffn_group", "depth_resnet", "depth_transformer"):
        idx = sd2.inventory.indices(kind)
        assert (grad[:, idx] > 0).float().mean() > 0.9, kind


def test_gradient_checkpointing_sees_the_gates():
    unet = build_unet(TINY_SD2)
    prunable = make_prunable(unet)
    args, kwargs = inputs(TINY_SD2, batch=2)

    def grads() -> tuple[torch.Tensor, torch.Tensor]:
        gates = torch.rand(2, prunable.num_units, generator=torch.Generator().manual_seed(0)).requires_grad_()
        unet.zero_grad()
        prunable(*args, gates=gates, **kwargs).sample.square().mean().backward()
        return gates.grad.clone(), unet.conv_in.weight.grad.clone()

    unet.train()
    plain = grads()
    unet.enable_gradient_checkpointing()
    checkpointed = grads()
    torch.testing.assert_close(checkpointed[0], plain[0], atol=1e-5, rtol=1e-4)
    torch.testing.assert_close(checkpointed[1], plain[1], atol=1e-5, rtol=1e-4)
    prunable.restore()


def test_context_is_cleaned_up_on_errors_and_restore_removes_hooks():
    unet = build_unet(TINY_SD2)
    args, kwargs = inputs(TINY_SD2)
    with torch.no_grad():
        pristine = unet(*args, **kwargs).sample
    prunable = make_prunable(unet)
    bad_text = torch.randn(2, 7, 5)  # wrong width: fails deep inside the U-Net
    with pytest.raises(RuntimeError):
        prunable(args[0], args[1], bad_text, gates=torch.zeros(prunable.num_units))
    assert _ACTIVE.get() is None
    with torch.no_grad():
        assert torch.equal(prunable(*args, **kwargs).sample, pristine)
    other = make_prunable(unet, depth=None)  # a second instrumentation never sees the first one's gates
    gates = random_mask(other, 0.5, 3).float()
    with torch.no_grad():
        alone = other(*args, gates=gates, **kwargs).sample
        assert torch.equal(prunable(*args, **kwargs).sample, pristine)
    other.restore()
    assert prunable.restore() is unet
    with torch.no_grad():
        assert torch.equal(unet(*args, **kwargs).sample, pristine)
    with pytest.raises(RuntimeError, match="restored"):
        prunable(*args, gates=torch.ones(prunable.num_units), **kwargs)
    again = make_prunable(unet, depth=None)
    with torch.no_grad():
        assert torch.equal(again(*args, gates=gates, **kwargs).sample, alone)
    again.restore()


def test_nested_forwards_of_two_unets_keep_their_own_gates():
    a, b = make_prunable(build_unet(TINY_SD2, seed=0)), make_prunable(build_unet(TINY_SD1, seed=1))
    args_a, kw_a = inputs(TINY_SD2)
    args_b, kw_b = inputs(TINY_SD1)
    gates_a, gates_b = random_mask(a, 0.5, 1).float(), random_mask(b, 0.5, 2).float()
    with torch.no_grad():
        alone_a = a(*args_a, gates=gates_a, **kw_a).sample
        alone_b = b(*args_b, gates=gates_b, **kw_b).sample
        inner: list[torch.Tensor] = []
        # b runs (with its own gates) in the middle of a's gated forward.
        handle = a.unet.mid_block.register_forward_pre_hook(
            lambda *_: inner.append(b(*args_b, gates=gates_b, **kw_b).sample))
        nested_a = a(*args_a, gates=gates_a, **kw_a).sample
        handle.remove()
    assert torch.equal(nested_a, alone_a) and torch.equal(inner[0], alone_b)


@pytest.mark.parametrize("config", [TINY_SD1, TINY_SDXL], ids=["sd1", "sdxl"])
def test_other_families_gate(config):
    unet = build_unet(config)
    prunable = make_prunable(unet)
    kinds = Counter(u.kind for u in prunable.units)
    assert kinds["depth_resnet"] > 0 and kinds["depth_transformer"] > 0
    args, kwargs = inputs(config)
    with torch.no_grad():
        ref = unet(*args, **kwargs).sample
        assert torch.equal(prunable(*args, gates=prunable.dense_gates(2), **kwargs).sample, ref)
    prunable.restore()


def test_dropped_depth_blocks_are_identities(sd2):
    """Encoder: out == in. Decoder ResNet: out == h, the previous layer's output, not the skip tensor."""
    args, kwargs = inputs(TINY_SD2, batch=2)
    captured: dict[str, tuple] = {}

    def keep(name):
        def hook(module, hook_args, output):
            captured[name] = (hook_args[0], output[0] if isinstance(output, tuple) else output)
        return hook

    unet = sd2.unet
    names = {"enc": unet.down_blocks[0].resnets[1], "enc_attn": unet.down_blocks[0].attentions[1],
             "prev": unet.up_blocks[0].resnets[1], "dec": unet.up_blocks[0].resnets[2]}
    handles = [m.register_forward_hook(keep(n)) for n, m in names.items()]
    gates = torch.ones(2, sd2.num_units)
    gates[1, sd2.depth_indices] = 0.0  # sample 1 drops every depth block, sample 0 none
    with torch.no_grad():
        sd2(*args, gates=gates, **kwargs)
    for h in handles:
        h.remove()
    for name in ("enc", "enc_attn"):
        x, y = captured[name]
        assert torch.equal(y[1], x[1]) and not torch.allclose(y[0], x[0])
    x, y = captured["dec"]
    h = captured["prev"][1]
    assert x.shape[1] > h.shape[1]  # cat[h, skip]
    assert torch.equal(y[1], h[1]) and torch.equal(y[1], x[1, : h.shape[1]])
