"""2:4 semi-structured sparsity on the GPU: turn a U-Net's 2:4-pruned ``nn.Linear`` weights into PyTorch's
semi-structured sparse tensors, so that the pruned half of each weight is skipped by the sparse tensor cores.

The post-training methods (``magnitude``, ``wanda``, ``sparsegpt``, ``owl`` with ``pattern: "2:4"``)
zero two of every four consecutive input weights of each output row, but keep the weights dense: the
model is exactly as fast as before. :func:`to_semi_structured` swaps every eligible Linear weight for
``torch.sparse`` ``SparseSemiStructuredTensor`` (what ``torch.sparse.to_sparse_semi_structured``
returns), which stores half the values plus metadata and multiplies with cuSPARSELt or CUTLASS.

Requirements (PyTorch's): a CUDA GPU with sparse tensor cores (compute capability 8.0 or newer, e.g.
A100, H100), fp16 or bf16 weights, and a 2-D weight whose rows and columns are multiples of the
backend's minimum block (cuSPARSELt fp16/bf16: 16 x 16; CUTLASS fp16/bf16: 32 x 64). The attention
and feed-forward Linears of SD U-Nets qualify; convolutions are not Linears and stay dense.

A Linear is converted only when its weight really is 2:4 (:func:`check_2to4`): compressing a weight
with three non-zeros in a group of four would silently drop one of them. Layers the pruning method
excluded, or whose shape does not fit, are skipped and listed in the :class:`SemiStructuredReport`.
:func:`plan_semi_structured` makes the same selection on any device (CPU included) without converting.

Semi-structured tensors are an in-memory format: convert after loading (the saved pipeline keeps its
dense, 2:4-zeroed weights)::

    pipe = StableDiffusionPipeline.from_pretrained("runs/wanda24/artifacts/pipeline", torch_dtype=torch.float16)
    pipe.to("cuda")
    report = to_semi_structured(pipe.unet)
    print(report.summary())
"""

from __future__ import annotations

import fnmatch
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

from prunekit.errors import PrunekitError

BACKENDS = ("cusparselt", "cutlass")
SPARSE_DTYPES = (torch.float16, torch.bfloat16)
# (min rows, min cols) of the sparse operand for fp16/bf16, as torch 2.x declares them in
# `_DTYPE_SHAPE_CONSTRAINTS`; read from torch when it has them (see `min_shape`), these are the fallback.
_FALLBACK_MIN_SHAPE = {"cusparselt": (16, 16), "cutlass": (32, 64)}
REQUIREMENT = ("2:4 semi-structured sparse tensors need a CUDA GPU with sparse tensor cores (compute "
               "capability 8.0 or newer, e.g. A100 or H100) and fp16 or bf16 weights")


class SemiStructuredError(PrunekitError):
    """The module cannot be converted here (no suitable GPU, wrong dtype, unknown backend)."""

    exit_code = 2


def _backend_class(backend: str) -> Any:
    import torch.sparse

    return {"cusparselt": torch.sparse.SparseSemiStructuredTensorCUSPARSELT,
            "cutlass": torch.sparse.SparseSemiStructuredTensorCUTLASS}[backend]


def resolve_backend(backend: str = "auto") -> str:
    """``"auto"``: cuSPARSELt when this torch has it, else CUTLASS (what ``to_sparse_semi_structured`` picks
    unless CUTLASS is forced)."""
    if backend == "auto":
        return "cusparselt" if torch.backends.cusparselt.is_available() else "cutlass"
    if backend not in BACKENDS:
        raise SemiStructuredError(f"unknown 2:4 backend {backend!r}; choose auto, {', '.join(BACKENDS)}")
    return backend


def min_shape(backend: str, dtype: torch.dtype) -> tuple[int, int]:
    """The sparse weight's minimum (rows, cols) for ``backend`` and ``dtype``: both dimensions must be
    multiples of them."""
    constraints = getattr(_backend_class(backend), "_DTYPE_SHAPE_CONSTRAINTS", {})
    if dtype in constraints:
        entry = constraints[dtype]
        return int(entry.sparse_min_rows), int(entry.sparse_min_cols)
    if dtype in SPARSE_DTYPES:
        return _FALLBACK_MIN_SHAPE[backend]
    raise SemiStructuredError(f"{REQUIREMENT}; got {dtype}")


def count_2to4_violations(weight: torch.Tensor) -> int:
    """How many groups of 4 consecutive input weights (along each row) hold more than 2 non-zeros."""
    if weight.ndim != 2:
        raise ValueError(f"a 2:4 check needs a 2-D weight (out, in), got shape {tuple(weight.shape)}")
    rows, cols = weight.shape
    if cols % 4:
        raise ValueError(f"{cols} input columns do not split into groups of 4")
    nonzeros = (weight.detach() != 0).reshape(rows, cols // 4, 4).sum(dim=2)
    return int((nonzeros > 2).sum())


def check_2to4(weight: torch.Tensor) -> bool:
    """True when every group of 4 consecutive input weights in each row has at most 2 non-zeros."""
    if weight.ndim != 2 or weight.shape[1] % 4:
        return False
    return count_2to4_violations(weight) == 0


@dataclass
class SemiStructuredReport:
    """Which Linear layers (by module path) were converted, and why the others were skipped."""

    backend: str
    converted: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)

    def summary(self) -> str:
        # Reasons carry the layer's numbers; group them by their kind (the text before ": ").
        kinds = Counter(reason.split(": ")[0] for reason in self.skipped.values())
        skipped = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common())
        return (f"2:4 ({self.backend}): {len(self.converted)} Linear layers converted, {len(self.skipped)} skipped"
                + (f" ({skipped})" if skipped else ""))

    def to_dict(self) -> dict[str, Any]:
        return {"backend": self.backend, "converted": list(self.converted), "skipped": dict(self.skipped)}


def _target(module: Any) -> nn.Module:
    # A pipeline is accepted for its U-Net: the 2:4 layers of a post-training export live there.
    if not isinstance(module, nn.Module) and isinstance(getattr(module, "unet", None), nn.Module):
        return module.unet
    if not isinstance(module, nn.Module):
        raise TypeError(f"expected an nn.Module (or a pipeline with a .unet), got {type(module).__name__}")
    return module


def _is_semi_structured(weight: torch.Tensor) -> bool:
    return isinstance(weight, torch.sparse.SparseSemiStructuredTensor)


def plan_semi_structured(module: Any, *, backend: str = "auto", dtype: torch.dtype | None = None,
                         exclude: Sequence[str] = (), min_features: int = 0) -> SemiStructuredReport:
    """Which Linear layers of ``module`` :func:`to_semi_structured` would convert, on any device.

    ``dtype``: the dtype the weights will have when converted (default: each weight's own). A layer is
    skipped when its path matches an ``exclude`` glob, when ``min(in, out) < min_features``, when its
    shape is not a multiple of the backend's minimum block, or when its weight is not 2:4.
    """
    root = _target(module)
    name = resolve_backend(backend)
    report = SemiStructuredReport(backend=name)
    for path, layer in root.named_modules():
        if not isinstance(layer, nn.Linear):
            continue
        weight = layer.weight
        if _is_semi_structured(weight):
            report.skipped[path] = "already semi-structured"
            continue
        if any(fnmatch.fnmatchcase(path, pattern) for pattern in exclude):
            report.skipped[path] = "excluded: matches an exclude pattern"
            continue
        rows, cols = weight.shape
        if min(rows, cols) < min_features:
            report.skipped[path] = f"small: {rows}x{cols} is under min_features={min_features}"
            continue
        layer_dtype = dtype or weight.dtype
        if layer_dtype not in SPARSE_DTYPES:
            report.skipped[path] = f"dtype: {layer_dtype} (2:4 needs fp16 or bf16)"
            continue
        min_rows, min_cols = min_shape(name, layer_dtype)
        if rows % min_rows or cols % min_cols:
            report.skipped[path] = (f"shape: {rows}x{cols} is not a multiple of {min_rows}x{min_cols} "
                                    f"({name}, {layer_dtype})")
            continue
        violations = count_2to4_violations(weight)  # cols is a multiple of min_cols, hence of 4
        if violations:
            report.skipped[path] = (f"not 2:4: {violations} of {rows * (cols // 4)} groups of 4 have more than "
                                    "2 non-zeros (not pruned 2:4, e.g. excluded by the pruning method)")
            continue
        report.converted.append(path)
    return report


def _require_gpu(root: nn.Module, paths: Sequence[str]) -> None:
    layers = dict(root.named_modules())
    where = sorted({(str(layers[p].weight.device), str(layers[p].weight.dtype)) for p in paths}
                   or {(str(p.device), str(p.dtype)) for p in root.parameters()})
    devices = {torch.device(d) for d, _ in where}
    dtypes = {t for _, t in where}
    if any(d.type != "cuda" for d in devices) or dtypes - {str(t) for t in SPARSE_DTYPES}:
        found = ", ".join(f"{d} {t}" for d, t in where) or "no parameters"
        raise SemiStructuredError(f"{REQUIREMENT}; this module's Linear weights are on {found}: move it first, "
                                  "e.g. module.to('cuda', torch.float16)")
    for device in devices:
        major, minor = torch.cuda.get_device_capability(device)
        if major < 8:
            raise SemiStructuredError(f"{REQUIREMENT}; {torch.cuda.get_device_name(device)} has compute "
                                      f"capability {major}.{minor}")


def _contiguous_input(module: nn.Module, args: tuple) -> tuple:
    # The semi-structured linear kernel flattens its input with .view(), which fails on a strided
    # (e.g. transposed) activation; .contiguous() is free when it already is.
    return tuple(a.contiguous() if isinstance(a, torch.Tensor) else a for a in args)


def to_semi_structured(module: Any, *, backend: str = "auto", exclude: Sequence[str] = (),
                       min_features: int = 0) -> SemiStructuredReport:
    """Swap, in place, every eligible 2:4 ``nn.Linear`` weight of ``module`` (or of a pipeline's ``unet``)
    for a semi-structured sparse tensor; return the report of converted and skipped layers.

    Raises :class:`SemiStructuredError` unless the weights to convert are fp16/bf16 on a CUDA GPU of
    compute capability 8.0+. Selection as :func:`plan_semi_structured` (which runs anywhere). The layer
    stays an ``nn.Linear``; its weight becomes a frozen parameter (semi-structured tensors are for
    inference), and its input is made contiguous, as the sparse kernel needs.
    """
    root = _target(module)
    resolve_backend(backend)  # an unknown name is the first thing to report, GPU or not
    linears = [path for path, layer in root.named_modules() if isinstance(layer, nn.Linear)]
    _require_gpu(root, linears)
    report = plan_semi_structured(root, backend=backend, exclude=exclude, min_features=min_features)
    sparse_class = _backend_class(report.backend)
    layers = dict(root.named_modules())
    for path in report.converted:
        layer = layers[path]
        sparse = sparse_class.from_dense(layer.weight.detach().contiguous())
        layer.weight = nn.Parameter(sparse, requires_grad=False)
        layer.register_forward_pre_hook(_contiguous_input)
    return report
