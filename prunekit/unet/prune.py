"""Physical pruning: a smaller stock ``UNet2DConditionModel`` equal to the gated model under a hard mask.

The pruned model is rebuilt from the base config on the ``meta`` device (no init cost), its modules are
replaced by narrower ones (or by the stand-ins in :mod:`pruned_modules`), and the weights are sliced from
the source model's tensors and loaded with ``assign=True``. The source is only read; every tensor of the
result is a fresh copy, so fine-tuning the expert never touches the base model.

Zero-width layers (a mask that drops every group of a ResNet, every head of an attention or every FFN
group) are valid: the branch collapses to the constant it computes in the gated model (its output bias),
see :mod:`pruned_modules`. Width units inside a depth-pruned block are ignored (the block is gone).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, TypeVar, cast

import torch
from torch import nn

from ..pruned_weights import SliceMap, differing_entries, load_sliced
from .inventory import DepthLayout, Inventory, Layer, build_inventory, ffn_inner_dim
from .pruned_modules import (
    AttentionBiasOnly,
    FeedForwardBiasOnly,
    ResnetShortcutOnly,
    SkippedResnet,
    SkippedTransformer,
)

if TYPE_CHECKING:
    from .pruned_model import PrunedUNet2DConditionModel

_M = TypeVar("_M", bound=nn.Module)


def _submodule(root: nn.Module, path: str, cls: type[_M]) -> _M:
    """``root.get_submodule(path)``, checked to be a ``cls`` (the skeleton is a stock diffusers U-Net)."""
    module = root.get_submodule(path)
    if not isinstance(module, cls):
        raise TypeError(f"{path}: expected a {cls.__name__}, got {type(module).__name__}")
    return module


def _resolve(model: nn.Module, depth: DepthLayout, ffn_groups: int) -> tuple[nn.Module, Inventory]:
    from .gating import PrunableUNet

    if isinstance(model, PrunableUNet):
        return model.unet, model.inventory
    return model, build_inventory(model, depth, ffn_groups=ffn_groups)


def hard_mask(mask: Any, num_units: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(keep: bool tensor, scores: float tensor) from a bool / 0-1 / soft mask of shape (units,).

    Non-binary values are thresholded at 0.5; the raw values serve as scores for :func:`round_mask`.
    """
    m = torch.as_tensor(mask).detach().cpu()
    if m.shape != (num_units,):
        raise ValueError(f"mask must have shape ({num_units},), got {tuple(m.shape)}")
    scores = m.to(torch.float64)
    keep = m if m.dtype == torch.bool else scores > 0.5
    return keep.clone(), scores


def round_mask(model: nn.Module, mask: Any, round_to: int, *, scores: torch.Tensor | None = None,
               depth: DepthLayout = "aptp", ffn_groups: int = 32) -> torch.Tensor:
    """Add units back so every width layer keeps a multiple of ``round_to`` channels.

    Rule, per width layer with ``k`` kept units of ``size`` channels out of ``n``: keep the smallest
    ``k' >= k`` with ``k' * size % round_to == 0``; if no ``k' <= n`` qualifies, keep all ``n``. A layer
    with ``k == 0`` stays empty (0 is a multiple). The units added back are the dropped ones with the
    highest score (``scores``, else the mask values themselves), ties broken by lower position. Depth
    units are unchanged. Returns the adjusted bool mask; ``physically_prune(..., round_to=r)`` builds
    exactly the model that the gated model computes under this mask.
    """
    _, inventory = _resolve(model, depth, ffn_groups)
    return round_keep(inventory, mask, round_to, scores=scores)


def round_keep(inventory: Inventory, mask: Any, round_to: int, *, scores: torch.Tensor | None = None) -> torch.Tensor:
    """:func:`round_mask` over an explicit inventory (shared with the transformer denoisers)."""
    if round_to < 1:
        raise ValueError(f"round_to must be >= 1, got {round_to}")
    keep, mask_scores = hard_mask(mask, inventory.num_units)
    score = mask_scores if scores is None else torch.as_tensor(scores, dtype=torch.float64).detach().cpu()
    keep = keep.clone()
    for layer in inventory.width_layers:
        sl = slice(layer.start, layer.stop)
        k = int(keep[sl].sum())
        if k == 0:
            continue
        target = next((c for c in range(k, layer.count + 1) if (c * layer.size) % round_to == 0), layer.count)
        if target == k:
            continue
        dropped = (~keep[sl]).nonzero().flatten()
        # Stable sort on descending score: equal scores keep their position order.
        order = torch.sort(-score[sl][dropped], stable=True).indices
        keep[layer.start + dropped[order[: target - k]]] = True
    return keep


def _pair(value: tuple[int, ...]) -> tuple[int, int]:
    first, second = value  # nn.Conv2d stores its sizes as 2-tuples; the stubs only say tuple[int, ...]
    return first, second


def _meta_like_conv(conv: nn.Conv2d, in_channels: int, out_channels: int) -> nn.Conv2d:
    padding = conv.padding if isinstance(conv.padding, str) else _pair(conv.padding)
    return nn.Conv2d(in_channels, out_channels, _pair(conv.kernel_size), stride=_pair(conv.stride),
                     padding=padding, dilation=_pair(conv.dilation), groups=conv.groups,
                     bias=conv.bias is not None, padding_mode=conv.padding_mode, device="meta")


def _meta_like_linear(linear: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    return nn.Linear(in_features, out_features, bias=linear.bias is not None, device="meta")


def _channels(layer: Layer, kept_positions: torch.Tensor) -> torch.Tensor:
    offsets = torch.arange(layer.size)
    return (kept_positions[:, None] * layer.size + offsets[None, :]).flatten()


def _set_child(root: nn.Module, path: str, module: nn.Module) -> None:
    parent_path, _, name = path.rpartition(".")
    parent = root.get_submodule(parent_path) if parent_path else root
    if isinstance(parent, (nn.ModuleList, nn.Sequential)):
        parent[int(name)] = module
    else:
        setattr(parent, name, module)


def _shrink_resnet(model: nn.Module, layer: Layer, kept: torch.Tensor, slices: SliceMap) -> None:
    from diffusers.models.resnet import ResnetBlock2D

    resnet = _submodule(model, layer.path, ResnetBlock2D)
    p = layer.path
    if kept.numel() == 0:
        conv2 = resnet.conv2
        stand_in = ResnetShortcutOnly(resnet.conv_shortcut, conv2.out_channels, conv2.bias is not None,
                                      resnet.output_scale_factor).to("meta")
        _set_child(model, p, stand_in)
        if conv2.bias is not None:
            slices[f"{p}.bias"] = (f"{p}.conv2.bias", None, None)
        return
    idx = _channels(layer, kept)
    c = idx.numel()
    resnet.conv1 = _meta_like_conv(resnet.conv1, resnet.conv1.in_channels, c)
    slices[f"{p}.conv1.weight"] = (f"{p}.conv1.weight", 0, idx)
    if resnet.conv1.bias is not None:
        slices[f"{p}.conv1.bias"] = (f"{p}.conv1.bias", 0, idx)
    if resnet.time_emb_proj is not None:
        resnet.time_emb_proj = _meta_like_linear(resnet.time_emb_proj, resnet.time_emb_proj.in_features, c)
        slices[f"{p}.time_emb_proj.weight"] = (f"{p}.time_emb_proj.weight", 0, idx)
        if resnet.time_emb_proj.bias is not None:
            slices[f"{p}.time_emb_proj.bias"] = (f"{p}.time_emb_proj.bias", 0, idx)
    norm2 = resnet.norm2
    resnet.norm2 = nn.GroupNorm(kept.numel(), c, eps=norm2.eps, affine=norm2.affine, device="meta")
    if norm2.affine:
        slices[f"{p}.norm2.weight"] = (f"{p}.norm2.weight", 0, idx)
        slices[f"{p}.norm2.bias"] = (f"{p}.norm2.bias", 0, idx)
    resnet.conv2 = _meta_like_conv(resnet.conv2, c, resnet.conv2.out_channels)
    slices[f"{p}.conv2.weight"] = (f"{p}.conv2.weight", 1, idx)
    if resnet.conv2.bias is not None:
        slices[f"{p}.conv2.bias"] = (f"{p}.conv2.bias", None, None)


def _shrink_attention(model: nn.Module, layer: Layer, kept: torch.Tensor, slices: SliceMap) -> None:
    from diffusers.models.attention_processor import Attention

    attn = _submodule(model, layer.path, Attention)
    p = layer.path
    out = _submodule(attn, "to_out.0", nn.Linear)
    if kept.numel() == 0:
        stand_in = AttentionBiasOnly(out.out_features, out.bias is not None, attn.residual_connection,
                                     attn.rescale_output_factor).to("meta")
        _set_child(model, p, stand_in)
        if out.bias is not None:
            slices[f"{p}.bias"] = (f"{p}.to_out.0.bias", None, None)
        return
    idx = _channels(layer, kept)
    c = idx.numel()
    for name in ("to_q", "to_k", "to_v"):
        lin = getattr(attn, name)
        setattr(attn, name, _meta_like_linear(lin, lin.in_features, c))
        slices[f"{p}.{name}.weight"] = (f"{p}.{name}.weight", 0, idx)
        if lin.bias is not None:
            slices[f"{p}.{name}.bias"] = (f"{p}.{name}.bias", 0, idx)
    attn.to_out[0] = _meta_like_linear(out, c, out.out_features)
    slices[f"{p}.to_out.0.weight"] = (f"{p}.to_out.0.weight", 1, idx)
    if out.bias is not None:
        slices[f"{p}.to_out.0.bias"] = (f"{p}.to_out.0.bias", None, None)
    # Attributes the processors read to split heads.
    attn.heads = kept.numel()
    attn.inner_dim = attn.inner_kv_dim = c
    attn.sliceable_head_dim = kept.numel()


def _shrink_ffn(model: nn.Module, layer: Layer, kept: torch.Tensor, slices: SliceMap) -> None:
    from diffusers.models.attention import FeedForward

    ff = _submodule(model, layer.path, FeedForward)
    p = layer.path
    out = _submodule(ff, "net.2", nn.Linear)
    if kept.numel() == 0:
        _set_child(model, p, FeedForwardBiasOnly(out.out_features, out.bias is not None).to("meta"))
        if out.bias is not None:
            slices[f"{p}.bias"] = (f"{p}.net.2.bias", None, None)
        return
    inner, gated = ffn_inner_dim(ff)
    idx = _channels(layer, kept)
    proj = _submodule(ff, "net.0.proj", nn.Linear)
    # GEGLU's projection stacks [value; gate] rows: keep the same channels in both halves.
    rows = torch.cat([idx, idx + inner]) if gated else idx
    ff.net[0].proj = _meta_like_linear(proj, proj.in_features, rows.numel())
    slices[f"{p}.net.0.proj.weight"] = (f"{p}.net.0.proj.weight", 0, rows)
    if proj.bias is not None:
        slices[f"{p}.net.0.proj.bias"] = (f"{p}.net.0.proj.bias", 0, rows)
    ff.net[2] = _meta_like_linear(out, idx.numel(), out.out_features)
    slices[f"{p}.net.2.weight"] = (f"{p}.net.2.weight", 1, idx)
    if out.bias is not None:
        slices[f"{p}.net.2.bias"] = (f"{p}.net.2.bias", None, None)


def apply_structure(model: nn.Module, inventory: Inventory, keep: torch.Tensor) -> SliceMap:
    """Reshape ``model`` (a fresh meta-device U-Net) to the architecture selected by ``keep``.

    Returns how each changed state-dict entry is cut from the dense model's state dict; unchanged
    entries keep their key and shape.
    """
    slices: SliceMap = {}
    dropped_blocks = {layer.start for layer in inventory.depth_layers if not bool(keep[layer.start])}
    for layer in inventory.width_layers:
        if layer.depth_unit in dropped_blocks:
            continue
        kept = keep[layer.start:layer.stop].nonzero().flatten()
        if kept.numel() == layer.count:
            continue
        if layer.kind == "resnet_group":
            _shrink_resnet(model, layer, kept, slices)
        elif layer.kind == "attn_head":
            _shrink_attention(model, layer, kept, slices)
        else:
            _shrink_ffn(model, layer, kept, slices)
    for layer in inventory.depth_layers:
        if layer.start in dropped_blocks:
            stand_in = SkippedResnet(layer.identity_channels) if layer.kind == "depth_resnet" else SkippedTransformer()
            _set_child(model, layer.path, stand_in)
    return slices


def meta_skeleton(config: Any, class_name: str = "UNet2DConditionModel") -> nn.Module:
    """An uninitialised U-Net (meta device) from a diffusers config."""
    import diffusers

    cls = getattr(diffusers, class_name, None)
    if cls is None:
        raise ValueError(f"unknown diffusers model class {class_name!r}")
    with torch.device("meta"):
        return cls.from_config(dict(config))


def physically_prune(model: nn.Module, mask: Any, *, round_to: int | None = None,
                     scores: torch.Tensor | None = None, depth: DepthLayout = "aptp",
                     ffn_groups: int = 32) -> PrunedUNet2DConditionModel:
    """A smaller U-Net (a :class:`PrunedUNet2DConditionModel`) equal to the gated model under ``mask``.

    ``model``: a PrunableUNet (its unit layout is used) or a stock U-Net (layout from ``depth`` and
    ``ffn_groups``). ``mask``: (units,) bool / 0-1 (soft values are thresholded at 0.5). ``round_to``:
    see :func:`round_mask`; the result then equals the gated model under ``round_mask(...)``.
    The input model is not modified and shares no storage with the result.
    """
    from .pruned_model import PrunedUNet2DConditionModel, pruned_skeleton, pruning_entry

    unet = getattr(model, "unet", model)
    if isinstance(unet, PrunedUNet2DConditionModel):
        raise ValueError("the model is already pruned; prune its dense U-Net with the combined mask instead")
    source = unet.state_dict()
    # Checked first: the architecture is rebuilt from the config, so the model must be what it describes.
    pruned = meta_skeleton(unet.config, type(unet).__name__)
    differing = differing_entries(source, pruned.state_dict())
    if differing:
        raise ValueError("the model does not match a U-Net built from its config (already pruned or modified?); "
                         f"differing entries: {differing[:5]}")
    _, inventory = _resolve(model, depth, ffn_groups)
    keep, _ = hard_mask(mask, inventory.num_units)
    if round_to is not None:
        keep = round_mask(model, mask, round_to, scores=scores, depth=depth, ffn_groups=ffn_groups)
    slices = apply_structure(pruned, inventory, keep)
    # The result is a PrunedUNet2DConditionModel: its config says how it was cut, so it saves and loads
    # through diffusers' own loader.
    pruned = pruned_skeleton(cast(Mapping[str, Any], unet.config), pruning_entry(inventory, keep, round_to=round_to))
    load_sliced(pruned, unet, source, slices)
    return pruned

