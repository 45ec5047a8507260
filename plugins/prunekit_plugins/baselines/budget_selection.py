"""Choose the units to keep so that the pruned U-Net meets a budget (MACs, latency), by score.

The cost is the recipe's budget (``cost_of(mask)`` and ``dense``, :class:`prunekit.interfaces.Budget`)
or a MAC model (called on the mask). Greedy on that exact cost: remove the lowest-scoring removable unit anywhere in the network
until the MACs are at or below the target; then add back, highest score first, removed units that
still fit, so the result lands just under the target instead of up to one unit's MACs below it.
A width layer never loses its last unit.

Coarse units can still leave the result far below the target: in a small transformer one attention
head may cost 10 % of the MACs (the joint softmax runs over hundreds of text tokens) while an FFN group
costs 0.1 %, and once the greedy has removed a head it cannot add it back. With ``fill``, a result more
than that fraction below the target is selected again, the removal skipping (for as long as other
units remain) any step that would land below ``(1 - fill) * target``; the closer of the two results
is kept. Results already within ``fill`` of the target are unchanged. With ``round_to``, a width layer only takes kept counts
whose channel count is a multiple of ``round_to`` (or all its units), and removal steps move between
those counts, scored by the mean score of the units they remove.
"""

from __future__ import annotations

import heapq
from dataclasses import dataclass
from typing import Any


@dataclass(frozen=True)
class Selection:
    mask: Any  # BoolTensor (units,)
    macs: float
    ratio: float
    target: float


@dataclass
class _Group:
    order: list[int]  # unit indices, highest score first (ties: lower index first)
    allowed: list[int]  # kept counts this group may take, ascending
    kept: int


def _groups(inventory: Any, scores: Any, round_to: int | None) -> list[_Group]:
    groups = []
    for layer in inventory.width_layers:
        units = list(range(layer.start, layer.stop))
        order = sorted(units, key=lambda u: (-float(scores[u]), u))
        if round_to:
            allowed = [k for k in range(1, layer.count) if (k * layer.size) % round_to == 0] + [layer.count]
        else:
            allowed = list(range(1, layer.count + 1))
        groups.append(_Group(order, allowed, layer.count))
    for layer in inventory.depth_layers:
        groups.append(_Group([layer.start], [0, 1], 1))
    return groups


def _step(group: _Group, scores: Any, direction: int) -> tuple[float, list[int]] | None:
    """(mean score, units) of the next removal (direction -1) or addition (+1) in ``group``."""
    i = group.allowed.index(group.kept)
    j = i + direction
    if j < 0 or j >= len(group.allowed):
        return None
    lo, hi = sorted((group.kept, group.allowed[j]))
    units = group.order[lo:hi]
    return sum(float(scores[u]) for u in units) / len(units), units


def select_under_budget(cost_model: Any, inventory: Any, scores: Any, target_ratio: float, *,
                        round_to: int | None = None, fill: float | None = None) -> Selection:
    """Keep the highest-scoring units whose cost (``cost_model``: a budget, or a MAC model) stays within
    ``target_ratio`` of the dense model's. Raises ``ValueError`` if even the smallest allowed
    architecture is too big. ``Selection.macs`` is the cost in the budget's unit. ``fill``: see the
    module docstring (None: plain greedy)."""
    if hasattr(cost_model, "cost_of"):
        cost, unit = cost_model.cost_of, str(getattr(cost_model, "unit", "cost"))
    else:
        cost, unit = (lambda m: float(cost_model(m))), "MACs"
    dense = float(cost_model.dense)
    target = target_ratio * dense
    selection = _greedy(cost, unit, dense, inventory, scores, target_ratio, round_to, floor=None)
    if fill is not None and selection.macs < (1 - fill) * target:
        again = _greedy(cost, unit, dense, inventory, scores, target_ratio, round_to, floor=(1 - fill) * target)
        if again.macs > selection.macs:
            selection = again
    return selection


def _greedy(cost: Any, unit: str, dense: float, inventory: Any, scores: Any, target_ratio: float,
            round_to: int | None, *, floor: float | None) -> Selection:
    """Remove lowest-score steps until the cost is within the target, then add back what fits. With
    ``floor``, a removal that would take the cost below it is put aside while other steps remain."""
    import torch

    what = "MAC" if unit == "MACs" else "latency" if unit == "s" else unit
    target = target_ratio * dense
    tolerance = 1e-9 * dense  # float64 sums of per-unit coefficients
    mask = torch.ones(inventory.num_units, dtype=torch.float64)
    macs = float(cost(mask))
    groups = _groups(inventory, scores, round_to)

    heap: list[tuple[float, int, int]] = []

    def push(g: int, direction: int) -> None:
        step = _step(groups[g], scores, direction)
        if step is not None:
            heapq.heappush(heap, (direction * -step[0], g, groups[g].kept))

    for g in range(len(groups)):
        push(g, -1)
    deferred: list[tuple[float, int, int]] = []
    while macs > target + tolerance:
        if not heap and deferred:
            # Only steps that undershoot the floor are left: take the lowest-scoring one after all.
            heap, deferred = deferred, []
            heapq.heapify(heap)
            floor = None
        if not heap:
            raise ValueError(f"a {what} budget of {target_ratio:.4f} cannot be met: the smallest architecture this "
                             f"unit inventory allows costs {macs / dense:.4f} of the dense {what}")
        entry = heapq.heappop(heap)
        _, g, kept = entry
        if groups[g].kept != kept:
            continue
        step = _step(groups[g], scores, -1)
        assert step is not None
        trial = mask.clone()
        trial[step[1]] = 0.0
        trial_macs = float(cost(trial))
        if floor is not None and trial_macs < floor - tolerance:
            deferred.append(entry)
            continue
        mask, macs = trial, trial_macs
        groups[g].kept -= len(step[1])
        push(g, -1)

    heap = []
    for g in range(len(groups)):
        push(g, +1)
    while heap:
        _, g, kept = heapq.heappop(heap)
        if groups[g].kept != kept:
            continue
        step = _step(groups[g], scores, +1)
        assert step is not None
        trial = mask.clone()
        trial[step[1]] = 1.0
        trial_macs = float(cost(trial))
        if trial_macs > target + tolerance:
            continue  # costs only grow from here, so this group's later additions cannot fit either
        mask, macs = trial, trial_macs
        groups[g].kept += len(step[1])
        push(g, +1)
    return Selection(mask.bool(), macs, macs / dense, target_ratio)
