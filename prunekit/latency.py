"""Measured latency of a gated or pruned denoiser (U-Net or PixArt / SD3 / Flux transformer), as a
cheap differentiable function of its gates.

MACs predict latency on a CPU, not on a GPU (docs/benchmarks.md: an H100 at batch 1 saves almost
nothing from narrower layers). So the ``latency`` budget charges what a device measured, from a
*latency table* (:class:`LatencyTable`, a versioned JSON file written by ``prunekit profile``) that
holds, for one device, dtype, batch, latent size and text length:

- per width layer (a ResNet block, an attention's heads, a feed-forward's groups, by module path): the
  seconds of that layer at a few kept widths, in channels, from 0 to all of them. Each layer's module
  is timed alone, in the physically pruned form an expert has (:func:`prunekit.denoisers.physically_prune`),
  on the inputs it receives in a dense forward (captured by a hook): a layer's width changes nothing
  outside its module (block outputs keep their channels), so its latency is a function of its own
  width only. Where a layer's narrowing reaches outside its own module (a Flux single block's heads and
  MLP share the block's ``proj_out``), the smallest module it does not reach out of is timed instead
  (the inventory's ``footprint``: there, the block), with that layer narrowed and every other layer
  in it at full width, and the layer is charged that module's seconds minus its seconds at width 0.
  Layers with identical shapes share one measurement;
- per block (a U-Net's Transformer2D block, a transformer's block): its dense seconds, so a depth unit
  (a dropped block) is charged the block's glue (norms, projections, adaLN) on top of its inner layers;
- the dense denoiser's seconds. What no width layer or block covers (a U-Net's convolutions in and out,
  time embedding, resamplers, skip concatenations; a transformer's patch and time embeddings, final
  norm and projection) is the fixed cost: dense seconds minus the rest.

The estimate (:class:`LatencyModel`) interpolates each layer's seconds piecewise-linearly at its kept
channel count ``size * sum(gates)``; a layer inside a depth-gated block is multiplied by the block's
gate (it costs nothing once the block is dropped, as in the MAC model). ``interpolation="staircase"``
tables (``prunekit profile --tile N``, for GPUs) are measured at the top of every tile step and charge
the next step up: latency on a GPU is a staircase in width. Channel rounding (``round_to``) is charged
the same way: a layer is charged for the rounded width it will be exported with. Both use a
straight-through estimate: the value is the charged step, the gradient the slope of the interpolated
curve, so a hard (deployed) mask gets an exact cost and a useful gradient.

The measured seconds are made non-decreasing in width (isotonic fit) before use; both the raw and
the fitted seconds are stored. :func:`profile_latency` also times a few uniformly pruned whole models
against the dense one (the table's ``checks``: predicted and measured ratios, a self-check); with
``calibrate`` it fits one factor on the layers' seconds to them, the table's ``scale`` (default 1:
on the CPU the checks are noisier than the table, and the uncalibrated table predicted experts
better, docs/benchmarks.md).
"""

from __future__ import annotations

import math
import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from prunekit.latency_table import (
    INTERPOLATIONS,
    TABLE_FORMAT,
    TABLE_VERSION,
    LatencyTable,
    LatencyTableError,
    LayerCurve,
    block_of,
    config_hash,
    unet_config_hash,
)

from .unet.inventory import Inventory, Layer

__all__ = ["DTYPES", "INTERPOLATIONS", "TABLE_FORMAT", "TABLE_VERSION", "LatencyModel", "LatencyTable",
           "LatencyTableError", "LayerCurve", "block_of", "check_uniform", "config_hash", "fit_scale",
           "forward_inputs", "interleaved_ratio", "node_widths", "profile_latency", "uniform_mask", "unet_config_hash"]

DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


# --- the differentiable estimate -----------------------------------------------------------------------

def _isotonic(values: Sequence[float]) -> list[float]:
    """Least-squares non-decreasing fit (pool adjacent violators)."""
    blocks: list[list[float]] = []  # [mean, weight]
    for v in values:
        blocks.append([float(v), 1.0])
        while len(blocks) > 1 and blocks[-2][0] > blocks[-1][0]:
            m2, w2 = blocks.pop()
            m1, w1 = blocks.pop()
            blocks.append([(m1 * w1 + m2 * w2) / (w1 + w2), w1 + w2])
    out: list[float] = []
    for mean, weight in blocks:
        out.extend([mean] * int(weight))
    return out


def _padded(rows: Sequence[Sequence[float]], pad_step: float) -> torch.Tensor:
    """Rows of different lengths as one (rows, max) float64 tensor; padding keeps each row increasing."""
    width = max(len(r) for r in rows)
    out = torch.empty(len(rows), width, dtype=torch.float64)
    for i, r in enumerate(rows):
        out[i, :len(r)] = torch.tensor(list(r), dtype=torch.float64)
        for j in range(len(r), width):
            out[i, j] = r[-1] + pad_step * (j - len(r) + 1)
    return out


def _ceil_to(grid: torch.Tensor, count: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """The smallest grid value >= x, per row (grid: (L, Q) ascending, ``count`` real entries each)."""
    flat = x.reshape(-1, x.shape[-1]).transpose(0, 1).contiguous()  # (L, N)
    idx = torch.searchsorted(grid, flat - 1e-6)
    idx = torch.minimum(idx, (count - 1)[:, None])
    return grid.gather(1, idx).transpose(0, 1).reshape(x.shape)


class LatencyModel:
    """Seconds of one forward (the table's batch) as a function of gates, differentiable in them.

    ``model(gates)``: gates (units,) or (batch, units), soft or hard → seconds () or (batch,).
    ``inventory``: the prunable denoiser's (U-Net or transformer; any depth layout whose blocks the
    table timed). ``round_to``: charge each width layer for its width rounded up as
    :func:`prunekit.denoisers.round_mask` rounds it (a multiple of ``round_to`` channels, or all of them).

    ``model(g) = fixed + scale * (sum_i seconds_i(k_i(g)) * g_depth(i) + sum_d glue_d * g_d)``, with
    ``glue_d`` a depth unit's block seconds minus its width layers' full seconds (0 for a U-Net ResNet,
    which is its own width layer) and ``fixed = dense - scale * (sum_i seconds_i(full) + sum_d glue_d)``.
    """

    def __init__(self, table: LatencyTable, inventory: Inventory, *, round_to: int | None = None) -> None:
        self.table, self.inventory, self.round_to = table, inventory, round_to
        width_layers = inventory.width_layers
        missing = [layer.path for layer in width_layers if layer.path not in table.layers]
        if missing:
            raise LatencyTableError(f"the table has no entry for layer {missing[0]} ({len(missing)} missing)")
        for layer in width_layers:
            curve = table.layers[layer.path]
            if curve.kind != layer.kind or curve.channels != layer.channels:
                raise LatencyTableError(f"layer {layer.path}: the table has a {curve.kind} of {curve.channels} "
                                        f"channels, the model a {layer.kind} of {layer.channels}")
        self.num_units = inventory.num_units
        self.width_units = sum(layer.count for layer in width_layers)
        curves = [table.layers[layer.path] for layer in width_layers]
        self._x = _padded([c.widths for c in curves], 1.0)
        self._y = _padded([c.seconds for c in curves], 0.0)
        self._n = torch.tensor([len(c.widths) for c in curves], dtype=torch.long)
        self._channels = torch.tensor([layer.channels for layer in width_layers], dtype=torch.float64)
        # Kept channels of each layer = gates @ sizes (units x layers).
        sizes = torch.zeros(self.width_units, len(width_layers), dtype=torch.float64)
        for i, layer in enumerate(width_layers):
            sizes[layer.start:layer.stop, i] = layer.size
        self._sizes = sizes
        # Charged widths: the rounding grid, then the table's steps (staircase tables).
        grids = []
        for layer, curve in zip(width_layers, curves):
            grid = set(range(0, layer.channels + 1, layer.size))
            if round_to:
                grid = {c for c in grid if c % round_to == 0} | {0, layer.channels}
            if table.interpolation == "staircase":
                grid = {min(w for w in curve.widths if w >= c - 1e-9) for c in grid}
            grids.append(sorted(grid))
        self._stepped = bool(round_to) or table.interpolation == "staircase"
        self._grid = _padded(grids, 1.0)
        self._grid_n = torch.tensor([len(g) for g in grids], dtype=torch.long)
        # A width layer inside a depth-gated block is multiplied by that block's gate.
        n = self.num_units
        self._enclosing = torch.tensor([n if layer.depth_unit is None else layer.depth_unit for layer in width_layers],
                                       dtype=torch.long)
        full = [curve.seconds[-1] for curve in curves]
        depth_layers = inventory.depth_layers
        self._depth_index = torch.tensor([layer.start for layer in depth_layers], dtype=torch.long)
        consts = []
        width_paths = {layer.path for layer in width_layers}
        for d in depth_layers:
            inner = sum(f for layer, f in zip(width_layers, full) if layer.depth_unit == d.start)
            if d.path in width_paths:
                consts.append(0.0)  # a U-Net ResNet: its width layer is the whole block
                continue
            if d.path not in table.blocks:
                raise LatencyTableError(f"the table has no block entry for depth unit {d.path}")
            consts.append(max(0.0, table.blocks[d.path] - inner))
        self._depth_const = torch.tensor(consts, dtype=torch.float64)
        self.dense = float(table.dense_s)
        self.scale = float(table.scale)
        variable = self.scale * (sum(full) + float(self._depth_const.sum()))
        self.fixed = self.dense - variable
        if self.fixed < 0:
            raise LatencyTableError(f"the layers' seconds ({variable:.4g} s) exceed the dense denoiser's "
                                    f"({self.dense:.4g} s): the table's measurements are inconsistent")
        self._cache: dict[torch.device, tuple[torch.Tensor, ...]] = {}

    def _tensors(self, device: torch.device) -> tuple[torch.Tensor, ...]:
        if device not in self._cache:
            self._cache[device] = tuple(t.to(device) for t in (
                self._x, self._y, self._n, self._sizes, self._grid, self._grid_n, self._enclosing,
                self._depth_index, self._depth_const, self._channels))
        return self._cache[device]

    def _interp(self, x: torch.Tensor, y: torch.Tensor, n: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Piecewise-linear y(k) per layer; k: (N, L). At a node, the slope is the left segment's."""
        flat = k.transpose(0, 1).contiguous()  # (L, N)
        j = torch.searchsorted(x, flat.detach())
        j = torch.minimum(j.clamp(min=1), (n - 1)[:, None])
        x0, x1 = x.gather(1, j - 1), x.gather(1, j)
        y0, y1 = y.gather(1, j - 1), y.gather(1, j)
        out = y0 + (y1 - y0) * (flat - x0) / (x1 - x0)
        return out.transpose(0, 1)

    def layer_seconds(self, gates: torch.Tensor) -> torch.Tensor:
        """Charged seconds of each width layer, before depth gating: (N, layers)."""
        x, y, n, sizes, grid, grid_n, *_ = self._tensors(gates.device)
        channels = self._channels.to(gates.device)
        k = (gates[:, :self.width_units] @ sizes).clamp(min=0.0)
        k = torch.minimum(k, channels)
        soft = self._interp(x, y, n, k)
        if not self._stepped:
            return soft
        charged = self._interp(x, y, n, _ceil_to(grid, grid_n, k.detach()))
        return soft + (charged - soft).detach()

    def __call__(self, gates: torch.Tensor) -> torch.Tensor:
        g = torch.as_tensor(gates)
        out_dtype = g.dtype if g.is_floating_point() else torch.float32
        if g.shape[-1] != self.num_units:
            raise ValueError(f"gates have {g.shape[-1]} units, the latency model {self.num_units}")
        shape = g.shape[:-1]
        g = g.reshape(-1, self.num_units).to(torch.float64)
        *_, enclosing, depth_index, depth_const, _ = self._tensors(g.device)
        per_layer = self.layer_seconds(g)
        with_one = torch.cat([g, g.new_ones((g.shape[0], 1))], dim=-1)
        variable = (per_layer * with_one.index_select(1, enclosing)).sum(-1)
        if depth_const.numel():
            variable = variable + g.index_select(1, depth_index) @ depth_const
        return (self.fixed + self.scale * variable).reshape(shape).to(out_dtype)

    def ratio(self, gates: torch.Tensor) -> torch.Tensor:
        return self(gates) / self.dense

    def __repr__(self) -> str:
        return (f"LatencyModel(units={self.num_units}, {self.table.describe()}, dense={self.dense * 1e3:.2f} ms, "
                f"fixed={self.fixed * 1e3:.2f} ms, round_to={self.round_to})")


# --- measuring a table ---------------------------------------------------------------------------------

def _timer(device: torch.device) -> Callable[[Callable[[], object]], float]:
    cuda = device.type == "cuda"

    def run(fn: Callable[[], object]) -> float:
        if cuda:
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn()
        if cuda:
            torch.cuda.synchronize(device)
        return time.perf_counter() - start

    return run


def _detach(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    if isinstance(value, tuple):
        return tuple(_detach(v) for v in value)
    if isinstance(value, list):
        return [_detach(v) for v in value]
    if isinstance(value, dict):
        return {k: _detach(v) for k, v in value.items()}
    return value


def _shapes(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return tuple(value.shape)
    if isinstance(value, (tuple, list)):
        return tuple(_shapes(v) for v in value)
    if isinstance(value, dict):
        return tuple(sorted((k, _shapes(v)) for k, v in value.items()))
    return repr(value)


def _capture_inputs(model: nn.Module, paths: Sequence[str], args: tuple, kwargs: dict[str, Any]) -> dict[str, tuple]:
    """(args, kwargs) each module at ``paths`` receives in one forward of ``model``."""
    captured: dict[str, tuple] = {}
    handles = []
    for path in paths:
        def hook(module: nn.Module, a: tuple, kw: dict, path: str = path) -> None:
            captured.setdefault(path, (_detach(a), _detach(kw)))
        handles.append(model.get_submodule(path).register_forward_pre_hook(hook, with_kwargs=True))
    try:
        model(*args, **kwargs)
    finally:
        for handle in handles:
            handle.remove()
    lost = [p for p in paths if p not in captured]
    if lost:
        raise RuntimeError(f"no input was captured for {lost[0]}")
    return captured


def node_widths(layer: Layer, *, points: int, tile: int | None) -> list[int]:
    """Kept unit counts at which a layer is measured (0 and all included).

    Without ``tile``: ``points`` evenly spaced counts, plus one unit: a zero-width layer is a stand-in
    that costs next to nothing (:mod:`prunekit.unet.pruned_modules`), so latency jumps between 0 and
    one unit and is only linear above. With ``tile`` (channels): the largest count at or below every
    multiple of ``tile`` channels, i.e. the top of each step of a tile-quantised staircase.
    """
    if tile:
        steps = math.ceil(layer.channels / tile)
        ks = {min(layer.count, (m * tile) // layer.size) for m in range(steps + 1)}
    else:
        ks = {round(j * layer.count / (points - 1)) for j in range(points)} | {min(1, layer.count)}
    return sorted(ks | {0, layer.count})


def _describe_device(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    import platform

    return f"cpu {platform.machine()} {platform.processor() or ''}".strip()


def forward_inputs(model: nn.Module, *, height: int, width: int, text_len: int, batch: int = 1,
                   seed: int = 0) -> tuple[tuple, dict[str, Any]]:
    """Random (args, kwargs) shaped as what a run feeds ``model`` (a stock denoiser) at a ``height`` x
    ``width`` latent (Flux: packed into 2x2 patches, as its runs do) and ``text_len`` tokens."""
    from .denoisers import denoiser_kind, example_inputs

    args, kwargs = example_inputs(model, height=height, width=width, text_len=text_len, batch=batch,
                                  generator=torch.Generator().manual_seed(seed))
    if denoiser_kind(model) == "transformer":
        from .transformer.inventory import family_of

        if family_of(model) == "pixart":
            # PixArt's runs pass T5's attention mask (prunekit.conditioning): a masked attention can take
            # another kernel than an unmasked one, so time it with one.
            device = next(model.parameters()).device
            kwargs["encoder_attention_mask"] = torch.ones(batch, text_len, dtype=torch.long, device=device)
    return args, kwargs


def _timing_passes(layers: Sequence[Layer], timed: Mapping[str, str]) -> list[list[Layer]]:
    """The layers split so that no two in one pass share a timed module: each pass is narrowed in its
    own pruned models, so a layer timed in an enclosing module (a Flux single block's heads, its MLP)
    is timed with the other layers in that module at full width."""
    passes: list[list[Layer]] = []
    seen: dict[str, int] = {}
    for layer in layers:
        p = seen.get(timed[layer.path], 0)
        seen[timed[layer.path]] = p + 1
        if p == len(passes):
            passes.append([])
        passes[p].append(layer)
    return passes


def profile_latency(model: nn.Module, *, height: int, width: int, text_len: int = 77, batch: int = 1,
                    points: int = 5, tile: int | None = None, repeats: int = 5, warmup: int = 1,
                    ffn_groups: int = 32, check: Sequence[float] = (0.75, 0.5, 0.25), calibrate: bool = False,
                    seed: int = 0, cache: dict[tuple[str, int], nn.Module] | None = None,
                    log: Callable[[str], None] | None = None) -> LatencyTable:
    """Measure a latency table of ``model`` (a stock dense U-Net, PixArt, SD3 or Flux transformer,
    already on its device and dtype) at a ``height`` x ``width`` latent (unpacked) and ``text_len`` tokens.

    Every distinct (module shape, width) is timed ``repeats`` times, all of them interleaved with the
    dense forward in rounds (medians), so slow drifts of the machine hit every entry alike. ``check``:
    also time whole uniformly pruned models (every layer keeps that fraction of its units) against the
    dense one and record predicted and measured ratios in ``checks``; ``calibrate``: then fit the
    table's ``scale`` to them (:func:`fit_scale`). ``cache``: a dict that keeps the narrowed modules
    (they do not depend on the batch or latent size), to profile the same ``model`` again at other
    settings without pruning it again.
    """
    from .denoisers import build_inventory, physically_prune

    say = log or (lambda message: None)
    started = time.perf_counter()
    if points < 2:
        raise ValueError("points must be >= 2")
    param = next(model.parameters())
    device, dtype = param.device, param.dtype
    model.eval()
    inventory = build_inventory(model, "all", ffn_groups=ffn_groups)
    width_layers = inventory.width_layers
    timed = {layer.path: inventory.footprint(layer) for layer in width_layers}
    block_paths = list(dict.fromkeys(b for b in map(inventory.block_of, width_layers) if b is not None))
    args, kwargs = forward_inputs(model, height=height, width=width, text_len=text_len, batch=batch, seed=seed)
    timer = _timer(device)
    with torch.inference_mode():
        inputs = _capture_inputs(model, list(dict.fromkeys([*timed.values(), *block_paths])), args, kwargs)

        # Layers (and blocks) with the same parameter and input shapes share one measurement.
        def signature(path: str, kind: str) -> tuple:
            where = path if kind == "block" else timed[path]
            module = model.get_submodule(where)
            return (kind, path[len(where):], tuple((n, tuple(p.shape)) for n, p in module.named_parameters()),
                    _shapes(inputs[where]))

        representative: dict[tuple, str] = {}
        same_as: dict[str, str] = {}
        for path, kind in [(layer.path, layer.kind) for layer in width_layers] + [(p, "block") for p in block_paths]:
            same_as[path] = representative.setdefault(signature(path, kind), path)
        timed_layers = [layer for layer in width_layers if same_as[layer.path] == layer.path]
        nodes = {layer.path: node_widths(layer, points=points, tile=tile) for layer in width_layers}

        # The narrowed modules: node j of every layer of a pass at once, from one physically pruned model each.
        calls: dict[Any, Callable[[], object]] = {}

        def call(module: nn.Module, path: str) -> Callable[[], object]:
            a, kw = inputs[path]
            return lambda: module(*a, **kw)

        for layer in timed_layers:
            calls[(layer.path, layer.count)] = call(model.get_submodule(timed[layer.path]), timed[layer.path])
        for path in block_paths:
            if same_as[path] == path:
                calls[(path, -1)] = call(model.get_submodule(path), path)
        narrowed = {} if cache is None else cache
        for group in _timing_passes(timed_layers, timed):
            for j in range(max(len(nodes[layer.path]) for layer in group)):
                keep = torch.ones(inventory.num_units, dtype=torch.bool)
                wanted = []
                for layer in group:
                    ks = nodes[layer.path]
                    if j < len(ks) - 1 and (layer.path, ks[j]) not in narrowed:
                        keep[layer.start + ks[j]:layer.stop] = False
                        wanted.append((layer, ks[j]))
                if not wanted:
                    continue
                pruned = physically_prune(model, keep, depth="all", ffn_groups=ffn_groups).eval()
                for layer, k in wanted:
                    narrowed[(layer.path, k)] = pruned.get_submodule(timed[layer.path])
                del pruned  # only the narrowed modules timed are kept alive
        for layer in timed_layers:
            for k in nodes[layer.path][:-1]:
                calls[(layer.path, k)] = call(narrowed[(layer.path, k)], timed[layer.path])
        enclosed = sum(timed[layer.path] != layer.path for layer in width_layers)
        say(f"profiling {len(width_layers)} width layers ({len(timed_layers)} distinct, {enclosed} timed in their "
            f"block) and {len(block_paths)} blocks: {len(calls)} module timings per round, {repeats} rounds")

        calls["dense"] = lambda: model(*args, **kwargs)
        times: dict[Any, list[float]] = {key: [] for key in calls}
        keys = list(calls)
        order = torch.Generator().manual_seed(seed)
        for round_ in range(warmup + repeats):
            # A new random order every round: a burst of load from another process lands on random
            # entries instead of always on the same run of them.
            for i in torch.randperm(len(keys), generator=order).tolist():
                t = timer(calls[keys[i]])
                if round_ >= warmup:
                    times[keys[i]].append(t)
            say(f"round {round_ + 1}/{warmup + repeats} ({'warm-up' if round_ < warmup else 'timed'}), "
                f"{time.perf_counter() - started:.0f} s")
        medians = {key: statistics.median(t) for key, t in times.items()}
        del calls

    layers: dict[str, LayerCurve] = {}
    for layer in width_layers:
        rep = same_as[layer.path]
        rep_layer = inventory.layer(rep, layer.kind)
        measured = [medians[(rep, k)] for k in nodes[rep]]
        if timed[layer.path] != layer.path:
            # What the layer adds to its enclosing module: the module's seconds less those with the
            # layer at width 0 (the rest of the module is the block's glue). Noise can make a
            # difference negative; a layer never costs less than nothing.
            measured = [max(0.0, m - measured[0]) for m in measured]
        layers[layer.path] = LayerCurve(kind=layer.kind, channels=layer.channels, unit=layer.size,
                                        widths=[k * rep_layer.size for k in nodes[rep]], seconds=_isotonic(measured),
                                        measured_s=measured, same_as=None if rep == layer.path else rep,
                                        timed=None if timed[layer.path] == layer.path else timed[layer.path])
    blocks = {path: medians[(same_as[path], -1)] for path in block_paths}
    import diffusers

    config: Any = model.config  # a diffusers FrozenDict

    table = LatencyTable(
        device=str(device), device_name=_describe_device(device),
        dtype={v: k for k, v in DTYPES.items()}.get(dtype, str(dtype)), batch=batch, height=height, width=width,
        text_len=text_len, unet_class=type(model).__name__, unet_config_hash=config_hash(config),
        interpolation="staircase" if tile else "linear", dense_s=medians["dense"], layers=layers, blocks=blocks,
        tile=tile, threads=torch.get_num_threads() if device.type == "cpu" else None,
        torch_version=torch.__version__, diffusers_version=diffusers.__version__, repeats=repeats,
        created=time.strftime("%Y-%m-%dT%H:%M:%S%z"))
    # Noise (a loaded machine, few rounds) can make the isolated modules add up to more than the whole
    # forward; the whole forward bounds them (the fixed cost is never negative).
    bound = table.dense_s / table.variable_s()
    if bound < 1:
        say(f"the layers add up to {1 / bound:.3f} x the dense forward: scaled down to fit it (noisy timings?)")
        table.scale = bound
    if check:
        rows = check_uniform(model, table, fractions=check, repeats=repeats, warmup=warmup,
                             ffn_groups=ffn_groups, args=args, kwargs=kwargs, log=say)
        if calibrate:
            table.scale = min(fit_scale(rows), bound)
            for row in rows:
                row["calibrated_ratio"] = round(1 - table.scale * (1 - row["predicted_ratio"]), 6)
            say(f"calibration: isolated module timings scaled by {table.scale:.4f} to match whole models")
        table.checks = rows
    table.profile_seconds = round(time.perf_counter() - started, 1)
    return table


def uniform_mask(inventory: Inventory, fraction: float) -> torch.Tensor:
    """Every width layer keeps ``round(fraction * count)`` of its units (the first ones); depth kept."""
    keep = torch.ones(inventory.num_units, dtype=torch.bool)
    for layer in inventory.width_layers:
        keep[layer.start + round(fraction * layer.count):layer.stop] = False
    return keep


def interleaved_ratio(dense: Callable[[], object], other: Callable[[], object], *, repeats: int, warmup: int,
                      device: torch.device) -> tuple[float, float, float]:
    """(median dense s, median other s, median of the per-pair ratios other/dense), timed in alternation."""
    timer = _timer(device)
    for _ in range(warmup):
        timer(dense)
        timer(other)
    a, b = [], []
    for _ in range(repeats):
        a.append(timer(dense))
        b.append(timer(other))
    return statistics.median(a), statistics.median(b), statistics.median(y / x for x, y in zip(a, b))


def fit_scale(rows: Sequence[Mapping[str, Any]]) -> float:
    """A factor on the isolated modules' seconds fitted to whole-model measurements (``calibrate``).

    A module timed alone may run a little faster than inside the whole forward (its inputs are hot in
    the caches), so the seconds a narrower model saves could be underestimated. With ``d = 1 -
    predicted`` and ``m = 1 - measured`` ratios (savings), the median of ``m / d`` over the checks
    (robust to one disturbed check), kept within [0.5, 2].
    """
    ratios = [(1 - float(r["measured_ratio"])) / (1 - float(r["predicted_ratio"])) for r in rows
              if 1 - float(r["predicted_ratio"]) > 1e-6]
    if not ratios:
        return 1.0
    return min(2.0, max(0.5, statistics.median(ratios)))


def check_uniform(model: nn.Module, table: LatencyTable, *, fractions: Sequence[float], repeats: int, warmup: int,
                  ffn_groups: int, args: tuple, kwargs: dict[str, Any],
                  log: Callable[[str], None] | None = None) -> list[dict[str, Any]]:
    """Predicted against measured latency ratios of uniformly pruned whole models (a table's self-check)."""
    from .denoisers import build_inventory, physically_prune

    device = next(model.parameters()).device
    inventory = build_inventory(model, "all", ffn_groups=ffn_groups)
    estimate = LatencyModel(table, inventory)
    rows = []
    with torch.inference_mode():
        for fraction in fractions:
            mask = uniform_mask(inventory, fraction)
            pruned = physically_prune(model, mask, depth="all", ffn_groups=ffn_groups).eval()
            def run_pruned(p: nn.Module = pruned) -> object:
                return p(*args, **kwargs)

            dense_s, pruned_s, measured = interleaved_ratio(lambda: model(*args, **kwargs), run_pruned,
                                                            repeats=repeats, warmup=warmup, device=device)
            predicted = float(estimate.ratio(mask.double()))
            rows.append({"fraction": fraction, "predicted_ratio": round(predicted, 6),
                         "measured_ratio": round(measured, 6), "dense_s": dense_s, "pruned_s": pruned_s})
            if log:
                log(f"check: every layer at {fraction:.2f} of its units: predicted ratio {predicted:.3f}, "
                    f"measured {measured:.3f} ({(predicted / measured - 1):+.1%})")
            del pruned
    return rows
