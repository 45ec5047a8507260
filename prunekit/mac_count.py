"""MAC counting shared by every denoiser family: the FLOP trace, and the gate-linear MAC model fitted to it.

Counting convention: what ``torch.utils.flop_counter.FlopCounterMode`` counts (convolutions, linear layers
via mm/addmm, bmm/baddbmm and scaled-dot-product attention), halved to MACs, at batch 1. Elementwise ops
(norms, activations, softmax, bias adds) are not counted.

One caveat of FlopCounterMode itself: on CPU, ``F.scaled_dot_product_attention`` dispatches to
``aten._scaled_dot_product_flash_attention_for_cpu``, which has no flop formula in torch 2.13, so a plain
FlopCounterMode run on CPU tensors silently counts attention as 0. :func:`flop_counter_mode` adds the
standard SDPA formula for that kernel; every count here goes through it.

The MAC model is exact because every gated quantity is linear in the number of kept units of its layer,
and a depth gate multiplies its whole block::

    MACs(g) = base + sum_d const_d * g_d + sum_i coef_i * g_i * g_depth(i)

with ``g_depth(i) = 1`` for units outside depth-gated blocks. Which traced modules a width layer scales
is the family's knowledge (:mod:`prunekit.unet.macs`, :mod:`prunekit.transformer.macs`); turning those
FLOPs into the coefficients is :func:`fit_mac_model`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import torch
from torch import nn
from torch.utils.flop_counter import FlopCounterMode

if TYPE_CHECKING:
    from .unet.inventory import Inventory

# The (args, kwargs) of one batch-1 forward, built when called (inside the fake-tensor mode if any).
InputsFactory = Callable[[], tuple[tuple, dict[str, Any]]]


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


def forward_on_shapes(model: nn.Module, inputs: InputsFactory, counter: FlopCounterMode | None = None) -> None:
    """One no-grad forward of ``model`` on ``inputs()`` (under ``counter`` if given) that computes
    nothing: a meta model runs as it is, any other on fake tensors."""
    with torch.no_grad(), contextlib.ExitStack() as stack:
        if not any(p.is_meta for p in model.parameters()):
            from torch._subclasses.fake_tensor import FakeTensorMode

            # Fake tensors carry shapes only: the pass costs Python time, not a real forward.
            stack.enter_context(FakeTensorMode(allow_non_fake_inputs=True))
        args, kwargs = inputs()
        with counter if counter is not None else contextlib.nullcontext():
            model(*args, **kwargs)


def trace_flops(model: nn.Module, inputs: InputsFactory) -> tuple[int, dict[str, int], dict[str, int]]:
    """FLOPs of one forward of ``model`` on ``inputs()`` (see :func:`forward_on_shapes`): total, per
    module path ("" = root) and per aten op."""
    counter = flop_counter_mode()
    forward_on_shapes(model, inputs, counter)
    counts = counter.get_flop_counts()
    per_op = {str(op): int(v) for op, v in counts.get("Global", {}).items()}
    root = type(model).__name__
    per_module: dict[str, int] = {}
    for name, ops in counts.items():
        if name == "Global":
            continue
        path = "" if name == root else name[len(root) + 1:] if name.startswith(root + ".") else name
        per_module[path] = int(sum(ops.values()))
    return int(sum(per_op.values())), per_module, per_op


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


def fit_mac_model(inventory: Inventory, total: int, per_module: Mapping[str, int], prunable: Sequence[float],
                  *, height: int, width: int, text_len: int) -> MacModel:
    """The :class:`MacModel` of a dense trace (``total``, ``per_module`` from :func:`trace_flops`).

    ``prunable[k]``: the traced FLOPs that scale with the kept units of the k-th width layer of
    ``inventory``; they are spread evenly over its units. A depth unit owns what its block traced beyond
    the width layers inside it; everything else is the constant ``base``.
    """
    n = inventory.num_units
    coef = torch.zeros(n, dtype=torch.float64)
    depth_const = torch.zeros(n, dtype=torch.float64)
    depth_of = torch.full((n,), n, dtype=torch.long)  # n = the appended constant-one column
    base = float(total)
    inner_of_depth: dict[int, float] = {}
    for layer, flops in zip(inventory.width_layers, prunable, strict=True):
        coef[layer.start:layer.stop] = flops / layer.count
        base -= flops
        if layer.depth_unit is not None:
            depth_of[layer.start:layer.stop] = layer.depth_unit
            inner_of_depth[layer.depth_unit] = inner_of_depth.get(layer.depth_unit, 0.0) + flops
    for layer in inventory.depth_layers:
        const = float(per_module.get(layer.path, 0)) - inner_of_depth.get(layer.start, 0.0)
        depth_const[layer.start] = const
        base -= const
    if base < -0.5 or (depth_const < -0.5).any():
        raise RuntimeError("MAC attribution failed: negative constant term (module names did not match)")
    # FLOPs -> MACs
    return MacModel(base / 2, coef / 2, depth_const / 2, depth_of, height=height, width=width, text_len=text_len)
