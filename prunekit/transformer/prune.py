"""Physical pruning of a transformer denoiser: a smaller model equal to the gated one under a hard mask.

As for the U-Net (:mod:`prunekit.unet.prune`): the pruned model is rebuilt from the dense config on the
``meta`` device, its attentions / FFNs are narrowed (or replaced by stand-ins), and every weight is a
fresh slice of the dense model's. Per head, the rows of to_q/to_k/to_v (and add_q/add_k/add_v in joint
attention) and the columns of to_out[0] (and to_add_out) go together; a Flux single block's shared
``proj_out`` keeps the columns of the kept heads and MLP channels.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from ..pruned_weights import SliceMap, differing_entries, load_sliced
from ..unet.inventory import Layer
from ..unet.prune import _channels, _set_child, _shrink_ffn, hard_mask, round_keep
from ..unet.pruned_modules import AttentionBiasOnly
from .inventory import TransformerDepth, TransformerInventory, build_inventory
from .pruned_modules import JointAttentionBiasOnly, NoHeads, SkippedBlock

if TYPE_CHECKING:
    from .pruned_model import PrunedTransformerMixin


def _resolve(model: nn.Module, depth: TransformerDepth, ffn_groups: int) -> tuple[nn.Module, TransformerInventory]:
    from .gating import PrunableTransformer

    if isinstance(model, PrunableTransformer):
        return model.model, model.inventory
    return model, build_inventory(model, depth, ffn_groups=ffn_groups)


def round_mask(model: nn.Module, mask: Any, round_to: int, *, scores: torch.Tensor | None = None,
               depth: TransformerDepth = "all", ffn_groups: int = 32) -> torch.Tensor:
    """Add units back so every width layer keeps a multiple of ``round_to`` channels (rule of
    :func:`prunekit.unet.round_mask`)."""
    _, inventory = _resolve(model, depth, ffn_groups)
    return round_keep(inventory, mask, round_to, scores=scores)


def _linear(root: nn.Module, path: str) -> nn.Linear:
    module = root.get_submodule(path)
    if not isinstance(module, nn.Linear):
        raise TypeError(f"{path}: expected an nn.Linear, got {type(module).__name__}")
    return module


def _meta_linear(like: nn.Linear, in_features: int, out_features: int) -> nn.Linear:
    with warnings.catch_warnings():
        # A fully pruned Flux MLP is a zero-row linear on purpose; its (meta) initialisation is moot.
        warnings.filterwarnings("ignore", "Initializing zero-element tensors is a no-op")
        return nn.Linear(in_features, out_features, bias=like.bias is not None, device="meta")


def _rows(root: nn.Module, path: str, index: torch.Tensor, slices: SliceMap) -> None:
    """Keep the output rows ``index`` of the linear at ``path``."""
    lin = _linear(root, path)
    _set_child(root, path, _meta_linear(lin, lin.in_features, index.numel()))
    slices[f"{path}.weight"] = (f"{path}.weight", 0, index)
    if lin.bias is not None:
        slices[f"{path}.bias"] = (f"{path}.bias", 0, index)


def _columns(root: nn.Module, path: str, index: torch.Tensor, slices: SliceMap) -> None:
    """Keep the input columns ``index`` of the linear at ``path`` (its bias is unchanged)."""
    lin = _linear(root, path)
    _set_child(root, path, _meta_linear(lin, index.numel(), lin.out_features))
    slices[f"{path}.weight"] = (f"{path}.weight", 1, index)
    if lin.bias is not None:
        slices[f"{path}.bias"] = (f"{path}.bias", None, None)


def _zero_head_stand_in(attn: nn.Module, path: str, slices: SliceMap) -> nn.Module:
    to_out = getattr(attn, "to_out", None)
    if to_out is None:  # Flux single block: no output projection of its own
        return NoHeads()
    out = to_out[0]
    if getattr(attn, "added_kv_proj_dim", None) is None:
        if out.bias is not None:
            slices[f"{path}.bias"] = (f"{path}.to_out.0.bias", None, None)
        return AttentionBiasOnly(out.out_features, out.bias is not None,
                                 bool(getattr(attn, "residual_connection", False)),
                                 float(getattr(attn, "rescale_output_factor", 1.0)))
    add_out = getattr(attn, "to_add_out", None)
    if out.bias is not None:
        slices[f"{path}.bias"] = (f"{path}.to_out.0.bias", None, None)
    if add_out is not None and add_out.bias is not None:
        slices[f"{path}.context_bias"] = (f"{path}.to_add_out.bias", None, None)
    return JointAttentionBiasOnly(out.out_features, out.bias is not None,
                                  None if add_out is None else add_out.out_features,
                                  add_out is not None and add_out.bias is not None)


def _shrink_heads(model: nn.Module, layer: Layer, kept: torch.Tensor, slices: SliceMap) -> None:
    # Any: diffusers' Attention and FluxAttention share these attributes but no typed base.
    attn: Any = model.get_submodule(layer.path)
    p = layer.path
    if kept.numel() == 0:
        _set_child(model, p, _zero_head_stand_in(attn, p, slices).to("meta"))
        return
    idx = _channels(layer, kept)
    for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj"):
        if getattr(attn, name, None) is not None:
            _rows(model, f"{p}.{name}", idx, slices)
    if getattr(attn, "to_out", None) is not None:
        _columns(model, f"{p}.to_out.0", idx, slices)
    if getattr(attn, "to_add_out", None) is not None:
        _columns(model, f"{p}.to_add_out", idx, slices)
    # Attributes the processors read to split heads (Flux's infers the count from head_dim).
    attn.heads = kept.numel()
    attn.inner_dim = idx.numel()
    if hasattr(attn, "inner_kv_dim"):
        attn.inner_kv_dim = idx.numel()
    if hasattr(attn, "sliceable_head_dim"):
        attn.sliceable_head_dim = kept.numel()


def _shrink_single_block(model: nn.Module, block: str, heads: Layer, mlp: Layer, keep: torch.Tensor,
                         slices: SliceMap) -> None:
    """A Flux single block: attention heads and MLP channels both feed the shared ``proj_out``."""
    kept_heads = keep[heads.start:heads.stop].nonzero().flatten()
    kept_mlp = keep[mlp.start:mlp.stop].nonzero().flatten()
    if kept_heads.numel() == heads.count and kept_mlp.numel() == mlp.count:
        return
    if kept_heads.numel() != heads.count:
        _shrink_heads(model, heads, kept_heads, slices)
    mlp_idx = _channels(mlp, kept_mlp)
    if kept_mlp.numel() != mlp.count:
        # A zero-row proj_mlp is valid: it yields an empty MLP branch, as the gated model's zeros do.
        _rows(model, mlp.path, mlp_idx, slices)
    columns = torch.cat([_channels(heads, kept_heads), heads.channels + mlp_idx])
    _columns(model, f"{block}.proj_out", columns, slices)


def apply_structure(model: nn.Module, inventory: TransformerInventory, keep: torch.Tensor) -> SliceMap:
    """Reshape ``model`` (a fresh meta-device transformer) to the architecture selected by ``keep``;
    returns how each changed state-dict entry is cut from the dense state dict."""
    slices: SliceMap = {}
    dropped = {layer.start for layer in inventory.depth_layers if not bool(keep[layer.start])}
    width = [layer for layer in inventory.width_layers if layer.depth_unit not in dropped]
    by_block: dict[str, list[Layer]] = {}
    for layer in width:
        block = next(b for b in inventory.blocks if layer.path.startswith(b + "."))
        by_block.setdefault(block, []).append(layer)
    for block, layers in by_block.items():
        if block.startswith("single_transformer_blocks."):
            heads, mlp = layers
            _shrink_single_block(model, block, heads, mlp, keep, slices)
            continue
        for layer in layers:
            kept = keep[layer.start:layer.stop].nonzero().flatten()
            if kept.numel() == layer.count:
                continue
            if layer.kind == "attn_head":
                _shrink_heads(model, layer, kept, slices)
            else:
                _shrink_ffn(model, layer, kept, slices)  # FeedForwardBiasOnly when no group is left
    pair = inventory.family != "pixart"
    for layer in inventory.depth_layers:
        if layer.start in dropped:
            original = model.get_submodule(layer.path)
            _set_child(model, layer.path, SkippedBlock(pair, getattr(original, "context_pre_only", None)))
    return slices


def meta_skeleton(config: Mapping[str, Any], class_name: str) -> nn.Module:
    """An uninitialised dense transformer (meta device) from a diffusers config."""
    from diffusers import models

    cls = getattr(models, class_name, None)
    if cls is None:
        raise ValueError(f"unknown diffusers model class {class_name!r}")
    with torch.device("meta"):
        return cast(nn.Module, cls.from_config(dict(config)))


def physically_prune(model: nn.Module, mask: Any, *, round_to: int | None = None,
                     scores: torch.Tensor | None = None, depth: TransformerDepth = "all",
                     ffn_groups: int = 32) -> PrunedTransformerMixin:
    """A smaller transformer (a ``Pruned<Family>`` model) equal to the gated model under ``mask``.

    ``model``: a PrunableTransformer (its unit layout is used) or a stock transformer (layout from
    ``depth`` / ``ffn_groups``). ``mask``: (units,) bool / 0-1 (soft values are thresholded at 0.5).
    The input is not modified and shares no storage with the result.
    """
    from .pruned_model import PrunedTransformerMixin, pruned_class, pruned_skeleton, pruning_entry

    dense, inventory = _resolve(model, depth, ffn_groups)
    if isinstance(dense, PrunedTransformerMixin):
        raise ValueError("the model is already pruned; prune its dense model with the combined mask instead")
    source = dense.state_dict()
    class_name = type(dense).__name__
    config = cast(Mapping[str, Any], dense.config)  # a diffusers FrozenDict
    differing = differing_entries(source, meta_skeleton(config, class_name).state_dict())
    if differing:
        raise ValueError("the model does not match one built from its config (modified?); differing entries: "
                         f"{differing[:5]}")
    keep, _ = hard_mask(mask, inventory.num_units)
    if round_to is not None:
        keep = round_keep(inventory, mask, round_to, scores=scores)
    slices = apply_structure(meta_skeleton(config, class_name), inventory, keep)
    pruned = pruned_skeleton(pruned_class(dense), config, pruning_entry(inventory, keep, round_to=round_to))
    load_sliced(pruned, dense, source, slices)
    return pruned
