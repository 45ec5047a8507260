"""Budgets: the compute a pruned architecture uses, as a differentiable function of its gates.

``macs``: exact MACs (the MAC model). ``latency``: seconds measured on a device, from a latency
table written by ``prunekit profile`` (:mod:`prunekit.latency`; docs/latency.md), for U-Nets and
transformer denoisers alike.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from prunekit.config import option
from prunekit.hookspecs import hookimpl

if TYPE_CHECKING:
    import torch


@dataclass
class MacsBudgetConfig:
    target: float = option(0.78, gt=0, le=1, help="target mean MACs as a fraction of the dense U-Net")


class MacsBudget:
    """U-Net MACs per forward (batch 1, real text length) from the prunable U-Net's exact MAC model."""

    unit = "MACs"

    def __init__(self, config: MacsBudgetConfig, *, prunable: Any, height: int, width: int, text_len: int) -> None:
        self.target = config.target
        self.model = prunable.mac_model(height=height, width=width, text_len=text_len)

    @property
    def dense(self) -> float:
        return float(self.model.dense)

    def ratio(self, gates: torch.Tensor) -> torch.Tensor:
        """MACs of each row of ``gates`` as a fraction of the dense model's."""
        return self.model.ratio(gates)

    def cost_of(self, mask: torch.Tensor | None) -> float:
        """Exact MACs of one hard mask (None: the dense model)."""
        return self.dense if mask is None else float(self.model(mask))

    def macs(self, gates: torch.Tensor) -> torch.Tensor:
        return self.model(gates)


PROFILE_HINT = "measure one with `prunekit profile RECIPE --output {path}`"


@dataclass
class LatencyBudgetConfig:
    table: str = option(help="latency table (JSON) from `prunekit profile`, measured on the device, dtype, batch "
                             "and latent size you deploy")
    target: float = option(0.6, gt=0, le=1, help="target mean latency as a fraction of the dense denoiser's")
    round_to: int | None = option(None, ge=1, help="charge every layer for its width rounded up to a multiple of "
                                                   "this many channels (set it to the method's round_to)")

    def preflight(self) -> list[str]:
        """The table exists here and is a latency table (read as JSON only: no torch)."""
        path = Path(self.table).expanduser()
        hint = PROFILE_HINT.format(path=self.table)
        if not path.is_file():
            return [f"budget.table: no latency table at {path}; {hint}"]
        try:
            data = json.loads(path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
            return [f"budget.table: {path} cannot be read as JSON ({exc}); {hint}"]
        from prunekit.latency_table import TABLE_FORMAT, TABLE_VERSION

        if not isinstance(data, dict) or data.get("format") != TABLE_FORMAT:
            return [f"budget.table: {path} is not a prunekit latency table; {hint}"]
        if data.get("version") != TABLE_VERSION:
            return [f"budget.table: {path} has table version {data.get('version')!r}, this prunekit reads "
                    f"{TABLE_VERSION}; {hint}"]
        return []


class LatencyBudget:
    """Seconds per denoiser forward (U-Net or transformer) on the table's device, dtype, batch and latent
    size (measured).

    Differentiable in the gates like the MAC model (see :class:`prunekit.latency.LatencyModel`):
    a method that optimises the ``macs`` budget optimises measured latency with this one unchanged.
    ``files``: what the run directory keeps a copy of (the table, as ``artifacts/latency_table.json``).
    """

    unit = "s"

    def __init__(self, config: LatencyBudgetConfig, *, prunable: Any, height: int, width: int, text_len: int) -> None:
        from prunekit.errors import RecipeError
        from prunekit.latency import LatencyModel
        from prunekit.latency_table import LatencyTable, LatencyTableError

        self.target = config.target
        hint = PROFILE_HINT.format(path=config.table)
        try:
            self.table = LatencyTable.load(Path(config.table).expanduser())
            problem = self.table.mismatch(prunable.unet, height=height, width=width, text_len=text_len)
            if problem:
                raise LatencyTableError(f"{config.table} does not fit this run: {problem}")
            self.model = LatencyModel(self.table, prunable.inventory, round_to=config.round_to)
        except LatencyTableError as exc:
            raise RecipeError([f"budget.table: {exc}; {hint}"]) from None
        self.files = {"latency_table.json": Path(config.table).expanduser()}

    @property
    def dense(self) -> float:
        return float(self.model.dense)

    def ratio(self, gates: torch.Tensor) -> torch.Tensor:
        """Latency of each row of ``gates`` as a fraction of the dense model's."""
        return self.model.ratio(gates)

    def cost_of(self, mask: torch.Tensor | None) -> float:
        """Seconds of one hard mask, rounding charged (None: the dense model)."""
        import torch

        return self.dense if mask is None else float(self.model(torch.as_tensor(mask).to(torch.float64)))


@hookimpl
def prunekit_check_recipe(recipe: dict[str, Any]) -> list[str]:
    """A latency budget charges the rounded widths a method exports: both must round alike."""
    budget, method = recipe.get("budget") or {}, recipe.get("method") or {}
    if budget.get("name") != "latency" or "round_to" not in method:
        return []
    if method.get("round_to") != budget.get("round_to"):
        return [f"budget.round_to: the method exports channels rounded to {method.get('round_to')} "
                f"(method.round_to) but the latency budget charges {budget.get('round_to')}; set both alike"]
    return []


@hookimpl
def prunekit_register_components(register) -> None:
    register("budget", "macs", MacsBudget, schema=MacsBudgetConfig, provides=("budget",),
             doc="MAC budget: target fraction of the dense U-Net's MACs (exact MAC model)")
    register("budget", "latency", LatencyBudget, schema=LatencyBudgetConfig, provides=("budget",),
             doc="Latency budget: target fraction of the dense denoiser's latency measured on a device "
                 "(a table from `prunekit profile`)")
