"""MACs of a (gated or pruned) U-Net, as a cheap differentiable function of the gates.

Counting convention: what ``torch.utils.flop_counter.FlopCounterMode`` counts (convolutions, linear layers
via mm/addmm, bmm/baddbmm and scaled-dot-product attention), halved to MACs, at batch 1. Cross-attention
is counted with the real text length. Elementwise ops (norms, activations, softmax, bias adds) are not
counted.

One caveat of FlopCounterMode itself: on CPU, ``F.scaled_dot_product_attention`` dispatches to
``aten._scaled_dot_product_flash_attention_for_cpu``, which has no flop formula in torch 2.13, so a plain
FlopCounterMode run on CPU tensors silently counts attention as 0. :func:`flop_counter_mode` adds the
standard SDPA formula for that kernel; every count here goes through it.

The MAC model is exact because every gated quantity is linear in the number of kept units of its layer
(conv1/time_emb_proj/conv2 in the ResNet width; q/k/v/out projections and both attention matmuls in the
head count; both FFN projections in the inner width), and a depth gate multiplies its whole block::

    MACs(g) = base + sum_d const_d * g_d + sum_i coef_i * g_i * g_depth(i)

with ``g_depth(i) = 1`` for units outside depth-gated blocks. The coefficients come from one
FlopCounterMode trace of the dense model per (height, width, text length) on meta or fake tensors, so
no real computation is done.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

from .inventory import DepthLayout, Inventory, build_inventory


def _sdpa_flops(query_shape: Any, key_shape: Any, value_shape: Any, *args: Any, out_shape: Any = None,
                **kwargs: Any) -> int:
    b, h, s_q, d_q = query_shape
    s_k, d_v = key_shape[-2], value_shape[-1]
    return 2 * b * h * s_q * s_k * d_q + 2 * b * h * s_q * s_k * d_v


def flop_counter_mode(display: bool = False) -> FlopCounterMode:
    """FlopCounterMode that also counts the CPU flash-attention kernel (see module docstring)."""
    mapping: dict[Any, Any] = {}
    cpu_sdpa = getattr(torch.ops.aten, "_scaled_dot_product_flash_attention_for_cpu", None)
    if cpu_sdpa is not None:
        mapping[cpu_sdpa] = _sdpa_flops
    return FlopCounterMode(display=display, custom_mapping=mapping)


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

    on_meta = any(p.is_meta for p in unet.parameters())
    counter = flop_counter_mode()
    # A compiled U-Net is counted through its eager forward (see compile.eager for why).
    with torch.no_grad(), eager(unet):
        if on_meta:
            args, kwargs = example_inputs(unet, height=height, width=width, text_len=text_len,
                                          added_cond_kwargs=added_cond_kwargs)
            with counter:
                unet(*args, **kwargs)
        else:
            from torch._subclasses.fake_tensor import FakeTensorMode

            # Fake tensors carry shapes only: the trace costs a Python pass, not a real forward.
            with FakeTensorMode(allow_non_fake_inputs=True):
                args, kwargs = example_inputs(unet, height=height, width=width, text_len=text_len,
                                              added_cond_kwargs=added_cond_kwargs)
                with counter:
                    unet(*args, **kwargs)
    counts = counter.get_flop_counts()
    per_op = {str(op): int(v) for op, v in counts.get("Global", {}).items()}
    root = type(unet).__name__
    per_module: dict[str, int] = {}
    for name, ops in counts.items():
        if name == "Global":
            continue
        path = "" if name == root else name[len(root) + 1:] if name.startswith(root + ".") else name
        per_module[path] = int(sum(ops.values()))
    return int(sum(per_op.values())), per_module, per_op


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


class MacModel:
    """MACs (batch 1) as a function of gates, at one latent size and text length.

    ``mac_model(gates)`` takes gates of shape (units,) or (batch, units), soft or hard, and returns MACs
    of shape () or (batch,), differentiable in the gates. Evaluation is two gathers and two mat-vecs.
    """

    def __init__(self, base: float, coef: torch.Tensor, depth_const: torch.Tensor, depth_of: torch.Tensor,
                 *, height: int, width: int, text_len: int) -> None:
        self.base = float(base)
        self.coef = coef.to(torch.float64)
        self.depth_const = depth_const.to(torch.float64)
        self.depth_of = depth_of.to(torch.long)
        self.height, self.width, self.text_len = height, width, text_len
        self.num_units = int(coef.numel())
        self.dense = self.base + float(self.coef.sum()) + float(self.depth_const.sum())
        self._on_device: dict[torch.device, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}

    def _tensors(self, device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        if device not in self._on_device:
            self._on_device[device] = (self.coef.to(device), self.depth_const.to(device), self.depth_of.to(device))
        return self._on_device[device]

    def __call__(self, gates: torch.Tensor) -> torch.Tensor:
        g = torch.as_tensor(gates)
        out_dtype = g.dtype if g.is_floating_point() else torch.float32
        if g.shape[-1] != self.num_units:
            raise ValueError(f"gates have {g.shape[-1]} units, the MAC model {self.num_units}")
        coef, depth_const, depth_of = self._tensors(g.device)
        # float64 keeps hard-mask counts exact to the MAC; the result goes back to the gates' dtype.
        g = g.to(torch.float64)
        with_one = torch.cat([g, g.new_ones((*g.shape[:-1], 1))], dim=-1)
        enclosing = with_one.index_select(-1, depth_of)
        macs = self.base + (g * enclosing) @ coef + g @ depth_const
        return macs.to(out_dtype)

    def ratio(self, gates: torch.Tensor) -> torch.Tensor:
        """MACs relative to the dense model."""
        return self(gates) / self.dense

    def __repr__(self) -> str:
        return (f"MacModel(units={self.num_units}, latent={self.height}x{self.width}, text_len={self.text_len}, "
                f"dense={self.dense / 1e9:.2f} GMACs)")


def build_mac_model(unet: nn.Module, inventory: Inventory, *, height: int, width: int, text_len: int = 77,
                    added_cond_kwargs: dict[str, torch.Tensor] | None = None) -> MacModel:
    total, per_module, _ = _trace(unet, height=height, width=width, text_len=text_len,
                                  added_cond_kwargs=added_cond_kwargs)
    n = inventory.num_units
    coef = torch.zeros(n, dtype=torch.float64)
    depth_const = torch.zeros(n, dtype=torch.float64)
    depth_of = torch.full((n,), n, dtype=torch.long)  # n = the appended constant-one column
    base = float(total)
    inner_of_depth: dict[int, float] = {}
    for layer in inventory.width_layers:
        if layer.kind == "resnet_group":
            parts = [f"{layer.path}.conv1", f"{layer.path}.time_emb_proj", f"{layer.path}.conv2"]
            prunable = float(sum(per_module.get(p, 0) for p in parts))
        else:
            # Attention: q/k/v/out projections and both attention matmuls; FFN: both projections.
            prunable = float(per_module.get(layer.path, 0))
        coef[layer.start:layer.stop] = prunable / layer.count
        base -= prunable
        if layer.depth_unit is not None:
            depth_of[layer.start:layer.stop] = layer.depth_unit
            inner_of_depth[layer.depth_unit] = inner_of_depth.get(layer.depth_unit, 0.0) + prunable
    for layer in inventory.depth_layers:
        const = float(per_module.get(layer.path, 0)) - inner_of_depth.get(layer.start, 0.0)
        depth_const[layer.start] = const
        base -= const
    if base < -0.5 or (depth_const < -0.5).any():
        raise RuntimeError("MAC attribution failed: negative constant term (module names did not match)")
    # FLOPs -> MACs
    return MacModel(base / 2, coef / 2, depth_const / 2, depth_of, height=height, width=width, text_len=text_len)


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
        with torch.no_grad():
            if any(p.is_meta for p in unet.parameters()):
                args, kwargs = example_inputs(unet, height=height, width=width, text_len=text_len)
                unet(*args, **kwargs)
            else:
                from torch._subclasses.fake_tensor import FakeTensorMode

                with FakeTensorMode(allow_non_fake_inputs=True):
                    args, kwargs = example_inputs(unet, height=height, width=width, text_len=text_len)
                    unet(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    parts["total_paper_convention"] = (parts["conv"] + parts["linear"] + parts["bias"] + parts["elementwise"]
                                       + parts["attention_as_counted"])
    return parts
