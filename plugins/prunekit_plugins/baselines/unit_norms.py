"""Weight-norm importance of every prunable unit (Li et al. 2017, "Pruning filters for efficient
ConvNets"), made comparable across layers.

A unit's L1 norm sums the absolute values of the weight matrices that physically go with it: the
rows it owns in its input projections and the columns it owns in its output projection.

- ResNet channel group: conv1 output filters, time_emb_proj rows, conv2 input kernels;
- attention head: to_q / to_k / to_v rows, to_out[0] columns; in a transformer's joint attention
  (SD3, Flux double blocks) also the add_q_proj / add_k_proj / add_v_proj rows and to_add_out
  columns of the text stream; in a Flux single block (no output projection of its own) its columns
  of the block's shared ``proj_out``;
- FFN group: the GEGLU (or GELU) projection rows of both halves, net[2] columns; a Flux single
  block's MLP group: its proj_mlp rows and its columns of ``proj_out``;
- depth unit (a whole ResNet / Transformer2D block, or transformer block): every conv and linear
  weight inside it.

These are exactly the weights physical pruning (``prunekit.unet.prune`` /
``prunekit.transformer.prune``) removes with the unit, for U-Nets and PixArt / SD3 / Flux
transformers alike.

Biases and norm affine parameters are left out: they are not filters, and their scale (norm
weights start at 1) says nothing about a unit's contribution.

Raw L1 sums are not comparable across layers: they grow with fan-in and unit size, and conv,
attention and FFN weights are initialised and trained at different scales. ``normalize`` decides:

- ``layer_mean`` (default): a unit's L1 divided by the mean L1 of the units of its layer, so a unit
  scores 1 when it is average for its layer and every layer ranks on the same footing. Scaling a
  whole layer leaves its scores unchanged. Depth units are divided by the mean over the depth units
  of their kind (mean |w| per block, since blocks differ in size).
- ``param_count``: L1 divided by the unit's parameter count (mean |w|); layers with larger weights
  keep more units.
- ``none``: the raw L1 sum (for reference; favours wide, high fan-in layers).
"""

from __future__ import annotations

from typing import Any, Literal

Normalization = Literal["layer_mean", "param_count", "none"]


def _unit_weights(root: Any, path: str, kind: str) -> list[tuple[Any, int]]:
    """(weight, channel dim) pairs whose slices along ``channel dim`` belong to the layer's channels,
    for the width layer at ``path`` of ``root`` (a U-Net or a transformer)."""
    import torch

    module = root.get_submodule(path)
    if kind == "resnet_group":
        parts = [(module.conv1.weight, 0), (module.conv2.weight, 1)]
        if module.time_emb_proj is not None:
            parts.append((module.time_emb_proj.weight, 0))
        return parts
    if kind == "attn_head":
        parts = [(getattr(module, name).weight, 0)
                 for name in ("to_q", "to_k", "to_v", "add_q_proj", "add_k_proj", "add_v_proj")
                 if getattr(module, name, None) is not None]
        if getattr(module, "to_out", None) is not None:
            parts.append((module.to_out[0].weight, 1))
        else:  # a Flux single block: the heads are the first columns of the block's shared proj_out
            inner = module.to_q.out_features
            parts.append((_parent(root, path).proj_out.weight[:, :inner], 1))
        if getattr(module, "to_add_out", None) is not None:
            parts.append((module.to_add_out.weight, 1))
        return parts
    if isinstance(module, torch.nn.Linear):  # a Flux single block's proj_mlp: rows, and proj_out's last columns
        return [(module.weight, 0), (_parent(root, path).proj_out.weight[:, -module.out_features:], 1)]
    return [(module.net[2].weight, 1)]


def _parent(root: Any, path: str) -> Any:
    return root.get_submodule(path.rpartition(".")[0])


def _per_channel(weight: Any, dim: int) -> tuple[Any, int]:
    """L1 of each slice along ``dim`` (float64) and the parameter count of one slice."""
    import torch

    w = weight.detach().to(torch.float64).abs().transpose(0, dim)
    return w.reshape(w.shape[0], -1).sum(1).cpu(), w[0].numel()


def unit_l1_norms(prunable: Any) -> tuple[Any, Any]:
    """(L1 norm, parameter count) of each unit of a ``PrunableUNet`` or ``PrunableTransformer``, float64
    tensors of shape (units,)."""
    import torch

    from prunekit.unet.inventory import ffn_inner_dim

    unet, inventory = prunable.unet, prunable.inventory  # a transformer's ``unet`` is its wrapped model
    l1 = torch.zeros(inventory.num_units, dtype=torch.float64)
    params = torch.zeros(inventory.num_units, dtype=torch.float64)
    for layer in inventory.width_layers:
        module = unet.get_submodule(layer.path)
        channel_l1 = torch.zeros(layer.channels, dtype=torch.float64)
        channel_params = 0
        for weight, dim in _unit_weights(unet, layer.path, layer.kind):
            values, count = _per_channel(weight, dim)
            channel_l1 += values
            channel_params += count
        if layer.kind == "ffn_group" and not isinstance(module, torch.nn.Linear):
            inner, gated = ffn_inner_dim(module)
            values, count = _per_channel(module.net[0].proj.weight, 0)
            # GEGLU stacks [value; gate] rows; a channel owns one row of each half.
            channel_l1 += values[:inner] + values[inner:] if gated else values
            channel_params += count * (2 if gated else 1)
        l1[layer.start:layer.stop] = channel_l1.view(layer.count, layer.size).sum(1)
        params[layer.start:layer.stop] = channel_params * layer.size
    for layer in inventory.depth_layers:
        block = unet.get_submodule(layer.path)
        weights = [p.detach() for p in block.parameters() if p.ndim >= 2]
        l1[layer.start] = sum(float(w.abs().to(torch.float64).sum()) for w in weights)
        params[layer.start] = sum(w.numel() for w in weights)
    return l1, params


def unit_scores(l1: Any, params: Any, inventory: Any, normalize: Normalization = "layer_mean") -> Any:
    """Importance of each unit (higher = keep), comparable across layers as ``normalize`` says."""
    import torch

    if normalize == "none":
        return l1.clone()
    per_param = l1 / params.clamp(min=1)
    if normalize == "param_count":
        return per_param
    if normalize != "layer_mean":
        raise ValueError(f"normalize must be layer_mean, param_count or none, got {normalize!r}")
    scores = torch.ones_like(l1)
    for layer in inventory.width_layers:
        values = l1[layer.start:layer.stop]
        mean = values.mean()
        if mean > 0:
            scores[layer.start:layer.stop] = values / mean
    for kind in ("depth_resnet", "depth_transformer"):
        idx = torch.tensor([layer.start for layer in inventory.depth_layers if layer.kind == kind], dtype=torch.long)
        if len(idx) and per_param[idx].mean() > 0:
            scores[idx] = per_param[idx] / per_param[idx].mean()
    return scores
