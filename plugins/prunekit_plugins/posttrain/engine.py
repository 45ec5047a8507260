"""Prune one component (a text encoder or the denoiser) with a rule, calibrating as the rule needs.

A :class:`PruningRule` says which input statistic it needs per layer (none, column norms or a
Hessian), may set per-layer targets from a dense pass (OWL), and turns a layer's weight and
statistic into a pruned weight. :func:`prune_component` runs the calibration passes:

* one-shot — a single pass over the dense component records every layer's statistic;
* sequential — one pass per block (``encoder.layers.i``, ``down_blocks.i``, ``transformer_blocks.i``,
  ...) in execution order, each recording only that block's layers *after* the blocks before it were pruned, so
  later layers compensate for earlier pruning and memory holds one block's statistics.
"""

from __future__ import annotations

import abc
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from torch import Tensor

from prunekit.calibration import Feed, capture_inputs, execution_order, run_until_stopped
from prunekit.errors import PrunekitError
from prunekit.ops.masks import layer_prune_mask, nm_prune_mask, parse_pattern, row_prune_mask
from prunekit_plugins.posttrain.layers import PrunableLayer, group_into_units, unit_of

log = logging.getLogger("prunekit")


@dataclass(frozen=True)
class LayerTarget:
    """What one layer is pruned to: a sparsity, or an N:M pattern ``(keep, group)``."""

    sparsity: float
    nm: tuple[int, int] | None = None


def uniform_targets(layers: Sequence[PrunableLayer], sparsity: float, pattern: str) -> dict[str, LayerTarget]:
    nm = parse_pattern(pattern)
    if nm is not None:
        sparsity = 1 - nm[0] / nm[1]
    return {layer.name: LayerTarget(sparsity, nm) for layer in layers}


def select_mask(scores: Tensor, target: LayerTarget, scope: str) -> Tensor:
    """Prune mask of one layer from its scores: N:M groups, per output row, or per layer."""
    if target.nm is not None:
        return nm_prune_mask(scores, *target.nm)
    if scope == "row":
        return row_prune_mask(scores, target.sparsity)
    return layer_prune_mask(scores, target.sparsity)


class PruningRule(abc.ABC):
    """Base rule: uniform targets, layer-by-layer pruning. Subclasses set :attr:`statistic` and
    implement :meth:`prune_matrix`; OWL overrides :meth:`targets`."""

    #: per-layer input statistic calibration records: None, "norms" or "hessian"
    statistic: str | None = None
    #: True when :meth:`targets` needs every layer's statistic from one dense pass first
    targets_need_statistics: bool = False

    def targets(
        self,
        layers: Sequence[PrunableLayer],
        sparsity: float,
        pattern: str,
        statistics: dict[str, Tensor] | None,
    ) -> dict[str, LayerTarget]:
        return uniform_targets(layers, sparsity, pattern)

    @abc.abstractmethod
    def prune_matrix(self, layer: PrunableLayer, statistic: Tensor | None, target: LayerTarget) -> Tensor:
        """The layer's pruned weight matrix (pruning order) for ``target``."""

    def prune_group(
        self, layers: Sequence[PrunableLayer], statistics: dict[str, Tensor], targets: dict[str, LayerTarget]
    ) -> None:
        for layer in layers:
            target = targets[layer.name]
            if target.sparsity > 0:
                layer.assign(self.prune_matrix(layer, statistics.get(layer.name), target))


@dataclass
class ComponentResult:
    targets: dict[str, LayerTarget]
    skipped: dict[str, str] = field(default_factory=dict)
    passes: int = 0
    units: list[str] = field(default_factory=list)
    seconds: float = 0.0


def _record(layers: Sequence[PrunableLayer], statistic: str, feed: Feed, *, stop_early: bool) -> dict[str, Tensor]:
    """One calibration pass recording ``statistic`` for ``layers``, in pruning column order."""
    modules = {layer.name: layer.module for layer in layers}
    stop_after = layers[-1].module if stop_early and feed.stoppable else None
    with capture_inputs(modules, statistic, stop_after=stop_after) as stats:
        feed()
    silent = [name for name, stat in stats.items() if stat.rows == 0]
    if silent:
        raise PrunekitError(
            f"{len(silent)} layer(s) never ran during calibration, so they have no statistics "
            f"({', '.join(silent[:5])}{', ...' if len(silent) > 5 else ''}); add them to the component's exclude"
        )
    return {layer.name: layer.reorder_statistic(stats[layer.name].result()) for layer in layers}


def _n_m_skips(layers: Sequence[PrunableLayer], targets: dict[str, LayerTarget]) -> dict[str, str]:
    skipped = {}
    for layer in layers:
        nm = targets[layer.name].nm
        if nm is not None and layer.columns % nm[1]:
            skipped[layer.name] = f"{layer.columns} input columns are not a multiple of {nm[1]}"
    return skipped


def prune_component(
    layers: Sequence[PrunableLayer],
    rule: PruningRule,
    *,
    sparsity: float,
    pattern: str = "unstructured",
    feed: Feed | None = None,
    sequential: bool = False,
    on_pass: Callable[[str], None] | None = None,
) -> ComponentResult:
    """Prune ``layers`` (one component's) in place with ``rule``; ``feed`` supplies calibration."""
    start = time.perf_counter()
    layers = list(layers)
    if rule.statistic is not None and feed is None:
        raise ValueError(f"{type(rule).__name__} needs calibration data (a feed)")
    dense: dict[str, Tensor] | None = None
    passes = 0
    if rule.targets_need_statistics and rule.statistic is not None:
        assert feed is not None  # checked above: a rule with a statistic has a feed
        dense = _record(layers, rule.statistic, feed, stop_early=False)
        passes += 1
        if on_pass:
            on_pass("dense statistics")
    targets = rule.targets(layers, sparsity, pattern, dense)
    skipped = _n_m_skips(layers, targets)
    for name in skipped:
        targets[name] = LayerTarget(0.0, None)
        log.warning("%s left dense: %s", name, skipped[name])
    work = [layer for layer in layers if targets[layer.name].sparsity > 0]

    units: list[list[PrunableLayer]] = []
    if rule.statistic is None:
        rule.prune_group(work, {}, targets)
    elif not sequential:
        assert feed is not None
        stats = dense if dense is not None else _record(work, rule.statistic, feed, stop_early=False)
        passes += dense is None
        rule.prune_group(work, stats, targets)
        if on_pass and dense is None:
            on_pass("all layers")
    else:
        assert feed is not None
        dense = None  # free it: sequential passes record each block afresh
        with execution_order({layer.name: layer.module for layer in work}) as order:
            run_until_stopped(feed.probe)
        units = group_into_units(work, order)
        for unit in units:
            stats = _record(unit, rule.statistic, feed, stop_early=True)
            passes += 1
            rule.prune_group(unit, stats, targets)
            del stats
            if on_pass:
                on_pass(unit_of(unit[0].name))
    unit_names = [unit_of(unit[0].name) for unit in units]
    return ComponentResult(targets, skipped, passes, unit_names, time.perf_counter() - start)
