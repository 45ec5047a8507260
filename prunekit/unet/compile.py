"""Compile a U-Net (dense or a pruned expert) for serving with ``torch.compile``.

A physically pruned expert saves MACs, but at batch 16 on a GPU an eager forward spends much of its
time launching kernels and in Python, which a narrower layer does not shorten. Compiling removes most
of that, so an expert's latency can follow its MACs; the dense model it is compared with must be
compiled the same way, or the comparison flatters the expert.

:func:`compile_unet` compiles the module in place (``nn.Module.compile``): the object stays the same
``UNet2DConditionModel`` (or ``PrunedUNet2DConditionModel``), so a diffusers pipeline still reads its
``config``, ``dtype`` and ``device``, ``state_dict`` keys do not change (no ``_orig_mod.`` prefix) and
``save_pretrained`` writes the same folder.

Modes (``torch.compile``'s):

- ``"max-autotune-no-cudagraphs"`` (the default here): Inductor kernels with autotuned matmuls and
  convolutions, no CUDA graphs. Any batch and resolution; each new shape compiles once more.
- ``"reduce-overhead"``: also captures the forward in **CUDA graphs**, which removes the remaining
  launch overhead but records fixed shapes and fixed memory addresses. Use it only with static shapes
  (one batch size and one resolution per compiled graph; a new shape records a new graph), weights
  that stay where they are (no CPU offload), and an output that is consumed before the next call (the
  next replay overwrites it; diffusers' sampling loop does so).
- ``"max-autotune"``: both of the above; ``"default"``: Inductor without autotuning (quickest to
  compile; what the CPU tests use).

``dynamic=False`` (the default) compiles for the exact shapes seen, which CUDA graphs need and which
gives the fastest kernels for a serving batch size.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from torch import nn

COMPILE_MODES = ("default", "reduce-overhead", "max-autotune", "max-autotune-no-cudagraphs")
CUDA_GRAPH_MODES = ("reduce-overhead", "max-autotune")

# Dynamo keeps its compiled graphs per *code object*, shared by every instance of a class: the dense
# U-Net and each expert (and each shape of each) are cache entries of the same ``forward``. With
# torch's default limit (8) a mixture of a few experts at two resolutions silently falls back to eager
# for the rest, so compiling raises the limit to at least this.
RECOMPILE_LIMIT = 64


def _raise_recompile_limit(limit: int) -> None:
    import torch._dynamo.config as dynamo_config

    # `cache_size_limit` is the pre-2.6 name of `recompile_limit`; set whichever this torch has.
    for name in ("recompile_limit", "cache_size_limit"):
        if hasattr(dynamo_config, name):
            if int(getattr(dynamo_config, name)) < limit:
                setattr(dynamo_config, name, limit)
            break
    for name in ("accumulated_recompile_limit", "accumulated_cache_size_limit"):
        if hasattr(dynamo_config, name):
            if int(getattr(dynamo_config, name)) < 4 * limit:
                setattr(dynamo_config, name, 4 * limit)
            break


def compile_unet(unet: nn.Module, *, mode: str = "max-autotune-no-cudagraphs", dynamic: bool | None = False,
                 fullgraph: bool = False, backend: str = "inductor",
                 recompile_limit: int | None = RECOMPILE_LIMIT, options: dict[str, Any] | None = None) -> nn.Module:
    """Compile ``unet``'s forward in place with ``torch.compile`` and return the same module.

    Compilation happens at the first call (and again for each new input shape, dtype or device).
    ``mode``: one of :data:`COMPILE_MODES`; ``"reduce-overhead"`` uses CUDA graphs, which need static
    shapes — a fixed batch size and resolution — and weights that do not move (see the module
    docstring). ``dynamic``: ``False`` compiles for the exact shapes (needed by CUDA graphs), ``None``
    lets torch decide, ``True`` asks for shape-generic kernels. ``fullgraph=True`` makes a graph break
    an error instead of a silent split. ``recompile_limit``: raise dynamo's process-wide recompile
    limit to at least this (see :data:`RECOMPILE_LIMIT`); ``None`` leaves it alone. ``options``: passed
    to ``torch.compile`` (Inductor options; not together with ``mode``, as torch requires).
    """
    if mode not in COMPILE_MODES:
        raise ValueError(f"unknown compile mode {mode!r}; choose one of {', '.join(COMPILE_MODES)}")
    if not isinstance(unet, nn.Module):
        raise TypeError(f"compile_unet needs an nn.Module, got {type(unet).__name__}")
    if recompile_limit is not None:
        _raise_recompile_limit(int(recompile_limit))
    settings: dict[str, Any] = dict(dynamic=dynamic, fullgraph=fullgraph, backend=backend)
    if options:
        settings["options"] = dict(options)
    elif backend == "inductor":
        settings["mode"] = mode
    unet.compile(**settings)
    return unet


def is_compiled(unet: nn.Module) -> bool:
    """Whether ``unet`` was compiled in place (``compile_unet`` / ``nn.Module.compile``)."""
    return getattr(unet, "_compiled_call_impl", None) is not None


def uncompile(unet: nn.Module) -> nn.Module:
    """Undo :func:`compile_unet`: later calls run eagerly again. Returns the same module."""
    # nn.Module.__call__ dispatches to `_compiled_call_impl` when it is set; clearing it is the inverse
    # of nn.Module.compile (torch has no public call for it).
    unet._compiled_call_impl = None
    return unet


@contextmanager
def eager(unet: nn.Module) -> Iterator[nn.Module]:
    """Inside the block, calls of ``unet`` run eagerly; its compiled forward is back afterwards.

    For traces that run the model under a dispatch mode (MAC counting with FakeTensors and
    FlopCounterMode): calling the compiled forward there left later calls at new shapes running
    eagerly, without recompiling (measured with torch 2.13 on the CPU).
    """
    compiled = getattr(unet, "_compiled_call_impl", None)
    unet._compiled_call_impl = None
    try:
        yield unet
    finally:
        unet._compiled_call_impl = compiled
