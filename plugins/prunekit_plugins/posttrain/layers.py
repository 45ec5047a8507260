"""Which layers of a component are pruned, and how each is seen as one weight matrix.

Pruned: every ``nn.Linear`` and dense ``nn.Conv2d`` of the component whose name matches no
``exclude`` glob. Embeddings and norms are never candidates (they are not Linear/Conv2d); the
denoiser's latent stem and head are excluded by default, like the embedding and LM head in
Wanda / SparseGPT: the U-Net's ``conv_in`` and ``conv_out`` (0.003 % of the U-Net), a transformer's
patch embedding (``pos_embed.proj``, Flux's ``x_embedder``) and final ``proj_out``.

A conv weight ``(out, in, kh, kw)`` is pruned as the matrix ``(out, kh·kw·in)`` — the layout of
sparse tensor cores and Apex ASP, so N:M groups run along input channels at one kernel tap. Its
calibration statistics arrive in unfold order (``in·kh·kw``) and are permuted the same way.
"""

from __future__ import annotations

import fnmatch
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from prunekit.calibration import can_capture


@dataclass
class PrunableLayer:
    name: str
    module: nn.Linear | nn.Conv2d  # what prunekit.calibration.can_capture accepts

    @property
    def weight(self) -> Tensor:
        return self.module.weight

    @property
    def rows(self) -> int:
        return self.weight.shape[0]

    @property
    def columns(self) -> int:
        return self.weight[0].numel()

    @property
    def numel(self) -> int:
        return self.weight.numel()

    @property
    def is_conv(self) -> bool:
        return self.weight.dim() == 4

    def matrix(self) -> Tensor:
        """The weight as ``(out, columns)`` in pruning order, float32 — for a float32 Linear a view
        of the weight itself: callers build new tensors from it and write back with :meth:`assign`."""
        w = self.weight.detach()
        if self.is_conv:
            w = w.permute(0, 2, 3, 1)
        return w.reshape(self.rows, -1).float()

    def assign(self, matrix: Tensor) -> None:
        """Write a matrix in pruning order back into the weight, in place."""
        if self.is_conv:
            out, cin, kh, kw = self.weight.shape
            matrix = matrix.reshape(out, kh, kw, cin).permute(0, 3, 1, 2)
        with torch.no_grad():
            self.weight.copy_(matrix.reshape(self.weight.shape).to(self.weight.dtype))

    def column_order(self) -> Tensor:
        """Indices taking unfold-order columns (``in·kh·kw``) to pruning order (``kh·kw·in``)."""
        cols = torch.arange(self.columns, device=self.weight.device)
        if not self.is_conv:
            return cols
        cin = self.weight.shape[1]
        return cols.reshape(cin, -1).T.reshape(-1)

    def reorder_statistic(self, stat: Tensor) -> Tensor:
        """Permute a per-column vector or a (columns, columns) Hessian into pruning order."""
        if not self.is_conv:
            return stat
        order = self.column_order().to(stat.device)
        return stat[order] if stat.dim() == 1 else stat[order][:, order]

    def sparsity(self) -> float:
        return float((self.weight == 0).sum()) / self.numel


def _excluded(name: str, patterns: Sequence[str]) -> bool:
    return any(fnmatch.fnmatchcase(name, p) or name.startswith(p + ".") for p in patterns)


def select_layers(component: nn.Module, exclude: Sequence[str] = ()) -> list[PrunableLayer]:
    """The component's prunable layers, in registration order."""
    return [
        PrunableLayer(name, module)
        for name, module in component.named_modules()
        if name and can_capture(module) and not _excluded(name, exclude)
    ]


def unit_of(name: str) -> str:
    """The block a layer belongs to for sequential pruning: its name up to the first list index
    (``encoder.layers.3``, ``down_blocks.1``, ``mid_block.resnets.0``), else its top-level module."""
    parts = name.split(".")
    for i, part in enumerate(parts):
        if part.isdigit():
            return ".".join(parts[: i + 1])
    return parts[0]


def group_into_units(layers: Sequence[PrunableLayer], order: Sequence[str]) -> list[list[PrunableLayer]]:
    """Layers grouped by :func:`unit_of`, units in the order their first layer ran (``order`` lists
    layer names by first execution; layers that never ran come last, in registration order)."""
    rank = {name: i for i, name in enumerate(order)}
    units: dict[str, list[PrunableLayer]] = {}
    for layer in sorted(layers, key=lambda la: rank.get(la.name, len(rank))):
        units.setdefault(unit_of(layer.name), []).append(layer)
    return list(units.values())
