"""MACs of a (gated or pruned) U-Net, as a cheap differentiable function of the gates.

The counting convention, the CPU attention caveat and the MAC model are :mod:`prunekit.mac_count`'s;
cross-attention is counted with the real text length. What is U-Net specific is which traced modules a
width unit scales: conv1/time_emb_proj/conv2 in the ResNet width; q/k/v/out projections and both
attention matmuls in the head count; both FFN projections in the inner width. The coefficients come from
one FlopCounterMode trace of the dense model per (height, width, text length) on meta or fake tensors, so
no real computation is done.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

# MacModel and flop_counter_mode are public here (prunekit.unet's names); they live in mac_count.
from ..mac_count import MacModel as MacModel
from ..mac_count import fit_mac_model, forward_on_shapes, trace_flops
from ..mac_count import flop_counter_mode as flop_counter_mode
from .inventory import DepthLayout, Inventory, build_inventory


def example_inputs(unet: nn.Module, *, height: int, width: int, text_len: int = 77, batch: int = 1,
                   added_cond_kwargs: dict[str, torch.Tensor] | None = None,
                   device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                   generator: torch.Generator | None = None) -> tuple[tuple, dict[str, Any]]:
    """Random (args, kwargs) for one U-Net forward; shapes come from the U-Net config."""
    config: Any = unet.config  # a diffusers FrozenDict: its keys are also attributes
    param = next(unet.parameters())
    device = param.device if device is None else torch.device(device)
    dtype = param.dtype if dtype is None else dtype
    if config.get("class_embed_type") is not None or config.get("num_class_embeds") is not None:
        raise ValueError("class-conditioned U-Nets need class_labels; they are not supported here")
    cross = config.get("encoder_hid_dim") or config.cross_attention_dim
    if isinstance(cross, (list, tuple)):
        cross = cross[0]

    def rand(*shape: int) -> torch.Tensor:
        if device.type == "meta":
            return torch.empty(shape, device=device, dtype=dtype)
        return torch.randn(shape, generator=generator, dtype=dtype).to(device)

    sample = rand(batch, config.in_channels, height, width)
    timestep = torch.full((batch,), 10, device=device, dtype=torch.long)
    hidden = rand(batch, text_len, cross)
    kwargs: dict[str, Any] = {}
    if added_cond_kwargs is not None:
        kwargs["added_cond_kwargs"] = added_cond_kwargs
    elif config.get("addition_embed_type") == "text_time":
        # SDXL convention: 6 time ids, each embedded to addition_time_embed_dim.
        time_dim = 6 * config.addition_time_embed_dim
        text_dim = config.projection_class_embeddings_input_dim - time_dim
        kwargs["added_cond_kwargs"] = {"text_embeds": rand(batch, text_dim), "time_ids": rand(batch, 6)}
    elif config.get("addition_embed_type") is not None:
        raise ValueError(f"addition_embed_type={config.addition_embed_type!r}: pass added_cond_kwargs")
    return (sample, timestep, hidden), kwargs


def _trace(unet: nn.Module, *, height: int, width: int, text_len: int,
           added_cond_kwargs: dict[str, torch.Tensor] | None) -> tuple[int, dict[str, int], dict[str, int]]:
    """FLOPs of one batch-1 forward: total, per module path ("" = root) and per aten op."""
    from .compile import eager

    def inputs() -> tuple[tuple, dict[str, Any]]:
        return example_inputs(unet, height=height, width=width, text_len=text_len,
                              added_cond_kwargs=added_cond_kwargs)

    # A compiled U-Net is counted through its eager forward (see compile.eager for why).
    with eager(unet):
        return trace_flops(unet, inputs)


def measure_macs(model: nn.Module, *, height: int, width: int, text_len: int = 77,
                 added_cond_kwargs: dict[str, torch.Tensor] | None = None) -> int:
    """MACs of one batch-1 forward of ``model`` as built (dense, or a physically pruned expert)."""
    unet = getattr(model, "unet", model)
    total, _, _ = _trace(unet, height=height, width=width, text_len=text_len, added_cond_kwargs=added_cond_kwargs)
    return total // 2


def macs_by_op(model: nn.Module, *, height: int, width: int, text_len: int = 77) -> dict[str, int]:
    """MACs of one batch-1 forward split by aten op (convolution, addmm, mm, bmm, sdpa kernels)."""
    unet = getattr(model, "unet", model)
    _, _, per_op = _trace(unet, height=height, width=width, text_len=text_len, added_cond_kwargs=None)
    return {op: v // 2 for op, v in per_op.items()}


def build_mac_model(unet: nn.Module, inventory: Inventory, *, height: int, width: int, text_len: int = 77,
                    added_cond_kwargs: dict[str, torch.Tensor] | None = None) -> MacModel:
    total, per_module, _ = _trace(unet, height=height, width=width, text_len=text_len,
                                  added_cond_kwargs=added_cond_kwargs)
    prunable: list[float] = []
    for layer in inventory.width_layers:
        if layer.kind == "resnet_group":
            parts = [f"{layer.path}.conv1", f"{layer.path}.time_emb_proj", f"{layer.path}.conv2"]
            prunable.append(float(sum(per_module.get(p, 0) for p in parts)))
        else:
            # Attention: q/k/v/out projections and both attention matmuls; FFN: both projections.
            prunable.append(float(per_module.get(layer.path, 0)))
    return fit_mac_model(inventory, total, per_module, prunable, height=height, width=width, text_len=text_len)


def count_macs(model: nn.Module, mask: torch.Tensor | None = None, *, height: int, width: int, text_len: int = 77,
               depth: DepthLayout = "aptp", ffn_groups: int = 32,
               added_cond_kwargs: dict[str, torch.Tensor] | None = None) -> float | torch.Tensor:
    """MACs of one batch-1 forward at a ``height`` x ``width`` latent and ``text_len`` tokens.

    ``model``: a PrunableUNet, or a stock/pruned ``UNet2DConditionModel``. With ``mask=None`` the model is
    counted as built (dense for a stock U-Net, the real count for a pruned expert). With a mask (units,)
    or (batch, units) the MAC model of the gated model is evaluated; for a stock U-Net the unit layout is
    given by ``depth``/``ffn_groups``. Returns a float, or a tensor when the mask requires grad or is
    batched.
    """
    from .gating import PrunableUNet

    if mask is None:
        if isinstance(model, PrunableUNet):
            return model.mac_model(height=height, width=width, text_len=text_len,
                                   added_cond_kwargs=added_cond_kwargs).dense
        return float(measure_macs(model, height=height, width=width, text_len=text_len,
                                  added_cond_kwargs=added_cond_kwargs))
    if isinstance(model, PrunableUNet):
        mac_model = model.mac_model(height=height, width=width, text_len=text_len, added_cond_kwargs=added_cond_kwargs)
    else:
        inventory = build_inventory(model, depth, ffn_groups=ffn_groups)
        mac_model = build_mac_model(model, inventory, height=height, width=width, text_len=text_len,
                                    added_cond_kwargs=added_cond_kwargs)
    mask_t = torch.as_tensor(mask)
    macs = mac_model(mask_t)
    if macs.ndim == 0 and not macs.requires_grad:
        return float(macs)
    return macs


def paper_convention_macs(model: nn.Module, *, height: int, width: int, text_len: int = 77) -> dict[str, float]:
    """Re-count a dense U-Net the way the APTP reference counter does (for docs/unet.md).

    That counter (ptflops-style hooks) counts conv/linear MACs like ours, plus bias additions, norms,
    SiLU/GELU and upsampling element counts, and for every ``Attention`` it adds
    ``heads * (2 * L * L * head_dim + L * L)`` with ``L`` the *query* length, also for cross-attention,
    where the key length is the text length. Returns the parts, in MACs.
    """
    from diffusers.models.activations import GEGLU
    from diffusers.models.attention_processor import Attention
    from diffusers.models.upsampling import Upsample2D

    unet = getattr(model, "unet", model)
    parts = {"conv": 0.0, "linear": 0.0, "bias": 0.0, "elementwise": 0.0,
             "attention_as_counted": 0.0, "attention_true": 0.0}
    inside_geglu = {id(m.proj) for m in unet.modules() if isinstance(m, GEGLU)}

    def hook(module: nn.Module, args: tuple, kwargs: dict, out: Any) -> None:
        x = args[0] if args else next(iter(kwargs.values()), None)
        if isinstance(module, nn.Conv2d):
            positions = out.shape[0] * math.prod(out.shape[2:])
            parts["conv"] += math.prod(module.kernel_size) * module.in_channels * module.out_channels // module.groups * positions
            parts["bias"] += module.out_channels * positions if module.bias is not None else 0
        elif isinstance(module, nn.Linear) and id(module) not in inside_geglu:
            assert x is not None  # linear layers, GEGLU and norms are always called with their input
            parts["linear"] += x.numel() * out.shape[-1]
            parts["bias"] += out.shape[-1] if module.bias is not None else 0
        elif isinstance(module, GEGLU):
            assert x is not None
            parts["linear"] += x.numel() * out.shape[-1] * 2
            parts["bias"] += out.shape[-1] if module.proj.bias is not None else 0
            parts["elementwise"] += 2 * out.numel()
        elif isinstance(module, nn.SiLU):
            parts["elementwise"] += 2 * out.numel()
        elif isinstance(module, nn.GroupNorm):
            assert x is not None
            parts["elementwise"] += 2 * x.numel()
        elif isinstance(module, nn.LayerNorm):
            assert x is not None
            parts["elementwise"] += x.numel()
        elif isinstance(module, Upsample2D):
            parts["elementwise"] += out.numel()
        elif isinstance(module, Attention):
            batch, length, dim = out.shape
            head_dim = dim // module.heads
            parts["attention_as_counted"] += batch * module.heads * (2 * length * length * head_dim + length * length)
            keys = kwargs.get("encoder_hidden_states")
            key_len = length if keys is None else keys.shape[1]
            parts["attention_true"] += batch * module.heads * 2 * length * key_len * head_dim

    handles = [m.register_forward_hook(hook, with_kwargs=True) for m in unet.modules()]
    try:
        forward_on_shapes(unet, lambda: example_inputs(unet, height=height, width=width, text_len=text_len))
    finally:
        for handle in handles:
            handle.remove()
    parts["total_paper_convention"] = (parts["conv"] + parts["linear"] + parts["bias"] + parts["elementwise"]
                                       + parts["attention_as_counted"])
    return parts
