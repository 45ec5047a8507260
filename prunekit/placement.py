"""Where tensors live and in which dtype: the compute device of this rank, the engine's precision,
and moving micro-batches and frozen models there.

Methods never pick devices themselves: the model plugin builds on :func:`compute_device`, the
engine moves every micro-batch with :func:`move`, and frozen parts (teacher U-Net, VAE, text
encoder) are placed with :func:`place_frozen`.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from typing import Any

import torch

PRECISION_DTYPES: dict[str, torch.dtype] = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def compute_device(spec: str = "auto") -> torch.device:
    """The device this rank computes on.

    ``auto``: ``cuda:LOCAL_RANK`` when a GPU is visible, else the CPU. A bare ``cuda`` also means
    this rank's GPU, so one recipe serves one process and eight alike; ``cuda:N`` and ``cpu`` are
    taken literally.
    """
    local = int(os.environ.get("LOCAL_RANK", "0"))
    if spec == "auto":
        return torch.device(f"cuda:{local}") if torch.cuda.is_available() else torch.device("cpu")
    if spec == "cuda":
        return torch.device(f"cuda:{local}")
    return torch.device(spec)


def compute_dtype(precision: str) -> torch.dtype:
    """The dtype of ``engine.precision`` (fp32, bf16, fp16)."""
    try:
        return PRECISION_DTYPES[precision]
    except KeyError:
        raise ValueError(f"unknown precision {precision!r}; expected one of {', '.join(PRECISION_DTYPES)}") from None


def check_precision(precision: str, device: torch.device) -> None:
    if precision == "fp16" and device.type == "cpu":
        raise ValueError("engine.precision=fp16 needs a GPU; use bf16 or fp32 on CPU")


def move(batch: Any, device: torch.device | str, dtype: torch.dtype | None = None) -> Any:
    """``batch`` with every tensor on ``device``; floating tensors also cast to ``dtype`` when given.

    Lists, tuples (named ones too), dicts and dataclass-free containers are rebuilt; anything else
    (ints, strings, None) is returned as it is.
    """
    if isinstance(batch, torch.Tensor):
        if dtype is not None and batch.is_floating_point():
            return batch.to(device=device, dtype=dtype, non_blocking=True)
        return batch.to(device=device, non_blocking=True)
    if isinstance(batch, Mapping):
        mapping_type: Any = type(batch)  # dict, OrderedDict, BatchEncoding...: each is built from a dict
        return mapping_type({k: move(v, device, dtype) for k, v in batch.items()})
    if isinstance(batch, tuple) and hasattr(batch, "_fields"):
        return type(batch)(*(move(v, device, dtype) for v in batch))
    if isinstance(batch, (list, tuple)):
        return type(batch)(move(v, device, dtype) for v in batch)
    return batch


def place_frozen(pipeline: Any, precision: str, device: torch.device | None = None) -> Any:
    """Put a diffusers pipeline's modules on the compute device in the compute dtype, frozen.

    The VAE, text encoder(s) and U-Net are only run forward here (as encoders and teacher); what is
    trained is copied from them and handed to the engine.
    """
    device = device or compute_device()
    check_precision(precision, device)
    dtype = compute_dtype(precision)
    for module in getattr(pipeline, "components", {}).values():
        if isinstance(module, torch.nn.Module):
            module.to(device=device, dtype=dtype)
            module.requires_grad_(False)
            module.eval()
    return pipeline
