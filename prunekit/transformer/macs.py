"""MACs of a (gated or pruned) transformer denoiser, as a differentiable function of the gates.

Same convention and model as the U-Net (:mod:`prunekit.mac_count`): what ``FlopCounterMode`` counts
(every linear and conv, plus both attention matmuls QK^T and AV through the SDPA formula, also for the
CPU flash kernel), halved, at batch 1; elementwise ops are not counted. Every gated quantity is linear in the kept
units of its layer:

- a head: its q/k/v rows in every stream, its QK^T and AV over the joint sequence, its output columns
  (both streams for joint attention; its ``proj_out`` columns in a Flux single block);
- an FFN / MLP group: its rows of the input projection and columns of the output projection,

and a depth gate multiplies its whole block, so ``MACs(g) = base + sum_d const_d g_d + sum_i coef_i g_i
g_depth(i)``, with the coefficients read from one trace of the dense model on meta or fake tensors.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..mac_count import MacModel, fit_mac_model, trace_flops
from .inventory import TransformerInventory, WidthSpec, family_of


def example_inputs(model: nn.Module, *, height: int, width: int, text_len: int = 77, batch: int = 1,
                   device: torch.device | str | None = None, dtype: torch.dtype | None = None,
                   generator: torch.Generator | None = None) -> dict[str, Any]:
    """Random keyword inputs for one forward at a ``height`` x ``width`` latent and ``text_len`` tokens.

    Flux takes its latents packed in 2x2 patches, as its pipeline does: ``(batch, height/2 * width/2,
    in_channels)`` with the matching ``img_ids`` / ``txt_ids``.
    """
    family = family_of(model)
    config: Any = model.config
    param = next(model.parameters())
    device = param.device if device is None else torch.device(device)
    dtype = param.dtype if dtype is None else dtype

    def rand(*shape: int) -> torch.Tensor:
        if device.type == "meta":
            return torch.empty(shape, device=device, dtype=dtype)
        return torch.randn(shape, generator=generator, dtype=dtype).to(device)

    if family == "pixart":
        text_dim = config.caption_channels or config.cross_attention_dim
        added: dict[str, torch.Tensor | None] = {"resolution": None, "aspect_ratio": None}
        if getattr(model, "use_additional_conditions", False):
            added = {"resolution": torch.full((batch, 2), 8.0 * height, device=device, dtype=dtype),
                     "aspect_ratio": torch.full((batch, 1), height / width, device=device, dtype=dtype)}
        return {"hidden_states": rand(batch, config.in_channels, height, width),
                "encoder_hidden_states": rand(batch, text_len, text_dim),
                "timestep": torch.full((batch,), 10, device=device, dtype=torch.long),
                "added_cond_kwargs": added}
    if family == "sd3":
        return {"hidden_states": rand(batch, config.in_channels, height, width),
                "encoder_hidden_states": rand(batch, text_len, config.joint_attention_dim),
                "pooled_projections": rand(batch, config.pooled_projection_dim),
                "timestep": torch.full((batch,), 10, device=device, dtype=torch.long)}
    if height % 2 or width % 2:
        raise ValueError(f"Flux packs 2x2 latent patches: the latent {height}x{width} must be even")
    h, w = height // 2, width // 2
    img_ids = torch.zeros(h, w, 3, device=device, dtype=dtype)
    img_ids[..., 1] = torch.arange(h, device=device, dtype=dtype)[:, None]
    img_ids[..., 2] = torch.arange(w, device=device, dtype=dtype)[None, :]
    inputs = {"hidden_states": rand(batch, h * w, config.in_channels),
              "encoder_hidden_states": rand(batch, text_len, config.joint_attention_dim),
              "pooled_projections": rand(batch, config.pooled_projection_dim),
              "timestep": torch.full((batch,), 0.5, device=device, dtype=dtype),
              "img_ids": img_ids.reshape(h * w, 3),
              "txt_ids": torch.zeros(text_len, 3, device=device, dtype=dtype)}
    if config.guidance_embeds:
        inputs["guidance"] = torch.full((batch,), 3.5, device=device, dtype=dtype)
    return inputs


def _trace(model: nn.Module, *, height: int, width: int, text_len: int) -> tuple[int, dict[str, int], dict[str, int]]:
    """FLOPs of one batch-1 forward: total, per module path ("" = root) and per aten op."""
    return trace_flops(model, lambda: ((), example_inputs(model, height=height, width=width, text_len=text_len)))


def _model_of(model: nn.Module) -> nn.Module:
    from .gating import PrunableTransformer

    return model.model if isinstance(model, PrunableTransformer) else model


def measure_macs(model: nn.Module, *, height: int, width: int, text_len: int = 77) -> int:
    """MACs of one batch-1 forward of ``model`` as built (dense, or physically pruned)."""
    total, _, _ = _trace(_model_of(model), height=height, width=width, text_len=text_len)
    return total // 2


def macs_by_op(model: nn.Module, *, height: int, width: int, text_len: int = 77) -> dict[str, int]:
    """MACs of one batch-1 forward split by aten op (mm / addmm / convolution / SDPA kernels)."""
    _, _, per_op = _trace(_model_of(model), height=height, width=width, text_len=text_len)
    return {op: v // 2 for op, v in per_op.items()}


def build_mac_model(model: nn.Module, inventory: TransformerInventory, *, height: int, width: int,
                    text_len: int = 77) -> MacModel:
    """The :class:`MacModel` of ``model`` (a stock dense transformer) under ``inventory``."""
    total, per_module, _ = _trace(model, height=height, width=width, text_len=text_len)
    prunable = [_prunable_flops(spec, per_module) for spec in inventory.specs]
    return fit_mac_model(inventory, total, per_module, prunable, height=height, width=width, text_len=text_len)


def _prunable_flops(spec: WidthSpec, per_module: dict[str, int]) -> float:
    """The traced FLOPs that scale with a width layer's kept units (its costs, each at its share)."""
    missing = [path for path, _ in spec.costs if path not in per_module]
    if missing:
        raise RuntimeError(f"MAC attribution failed: no FLOPs traced for {missing}")
    return sum(share * per_module[path] for path, share in spec.costs)
