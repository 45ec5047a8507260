"""The training engine: the only module that touches DeepSpeed.

``train`` runs a deterministic optimisation loop through ``deepspeed.initialize`` (ZeRO stage,
micro-batch, accumulation, precision from the recipe's ``engine`` section). It works in a plain
single process (it sets up a one-rank gloo group itself) and under ``torchrun`` / ``deepspeed``.
Determinism is by construction: the batch and the random state of every micro-step are functions
of the step index, so a run killed at any point and resumed from its last checkpoint ends in the
same state as an uninterrupted one.
"""

from __future__ import annotations

import logging
import math
import shutil
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from prunekit import checkpoints
from prunekit.engine_config import EngineConfig
from prunekit.errors import NonFiniteLossError

log = logging.getLogger("prunekit")

LossFn = Callable[[torch.nn.Module, Any, int], "tuple[torch.Tensor, dict[str, float]]"]
BatchFn = Callable[[int], Any]


def ensure_distributed() -> tuple[int, int]:
    """Initialise torch.distributed if needed; return ``(rank, world_size)`` (see prunekit.distributed)."""
    from prunekit import distributed

    return distributed.init()


def _quiet_deepspeed(cfg: EngineConfig) -> None:
    import deepspeed
    from deepspeed.utils import logger as ds_logger

    ds_logger.setLevel(logging.WARNING)
    if not torch.cuda.is_available() and not cfg.cpu_shm_comm:
        # The shared-memory all-reduce op is compiled on first use (~40 s); gloo is enough on CPU.
        deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False


def deepspeed_config(cfg: EngineConfig, world_size: int) -> dict[str, Any]:
    from prunekit.placement import check_precision, compute_device

    check_precision(cfg.precision, compute_device())
    return {
        "train_micro_batch_size_per_gpu": cfg.micro_batch,
        "gradient_accumulation_steps": cfg.grad_accum,
        "train_batch_size": cfg.micro_batch * cfg.grad_accum * world_size,
        "zero_optimization": {"stage": cfg.zero_stage},
        "gradient_clipping": cfg.grad_clip,
        "bf16": {"enabled": cfg.precision == "bf16"},
        "fp16": {"enabled": cfg.precision == "fp16"},
        "zero_allow_untested_optimizer": True,
        "steps_per_print": 1 << 30,
        "wall_clock_breakdown": False,
    }


def warmup_constant(warmup_steps: int, cooldown_steps: int = 0, total_steps: int = 0) -> Callable[[int], float]:
    """Linear warm-up to the base LR, then constant (the APTP paper's schedule); optionally a linear
    cool-down over the last ``cooldown_steps`` of ``total_steps``, so learned gates settle instead of
    ending mid-oscillation around their budget."""

    def factor(step: int) -> float:
        up = 1.0 if warmup_steps <= 0 else min(1.0, (step + 1) / warmup_steps)
        if cooldown_steps <= 0:
            return up
        left = total_steps - step
        return min(up, max(left, 1) / (cooldown_steps + 1))

    return factor


@dataclass
class TrainResult:
    history: list[dict[str, float]] = field(default_factory=list)
    resumed_from: int = 0
    steps: int = 0
    # Full trained weights of ``module`` (which also holds them after ``train`` returns).
    state_dict: dict[str, torch.Tensor] = field(default_factory=dict)
    # Wall-clock seconds per optimizer step over the steps run by this call (None if none ran),
    # and the peak accelerator memory allocated meanwhile (None on the CPU).
    seconds_per_step: float | None = None
    peak_memory_gib: float | None = None

    def timing(self) -> dict[str, float | None]:
        """What a stage records about its speed."""
        return {"seconds_per_step": None if self.seconds_per_step is None else round(self.seconds_per_step, 4),
                "peak_memory_gib": None if self.peak_memory_gib is None else round(self.peak_memory_gib, 3)}


def global_micro_index(step: int, micro: int, rank: int, world: int, grad_accum: int) -> int:
    """A unique index of one micro-batch in the whole run, whatever the world size split."""
    return (step * world + rank) * grad_accum + micro


def _nonfinite_parameters(engine: Any) -> tuple[int, str | None]:
    """How many trained values are NaN/inf on this rank, and the first parameter holding one."""
    named = [(n, getattr(p, "ds_tensor", None) if hasattr(p, "ds_tensor") else p)  # ZeRO-3: own partition
             for n, p in engine.module.named_parameters() if p.requires_grad]
    held = [(n, t) for n, t in named if t is not None and t.numel()]
    if not held:
        return 0, None
    counts = torch.stack([(~torch.isfinite(t.detach())).sum() for _, t in held]).tolist()
    first = next((n for (n, _), c in zip(held, counts) if c), None)
    return int(sum(counts)), first


def train(
    module: torch.nn.Module,
    loss_fn: LossFn,
    batch_fn: BatchFn,
    *,
    cfg: EngineConfig,
    lr: float,
    steps: int,
    ckpt_dir: str | Path,
    seed: int = 0,
    warmup_steps: int = 0,
    cooldown_steps: int = 0,
    param_groups: Iterable[dict[str, Any]] | None = None,
    name: str = "train",
    on_step: Callable[[int, dict[str, float]], None] | None = None,
    prefetch: Callable[[int], None] | None = None,
) -> TrainResult:
    """Optimise the trainable parameters of ``module`` for ``steps`` optimizer steps.

    ``batch_fn(i)`` returns micro-batch ``i`` (see :func:`global_micro_index`) on the CPU, drawing
    any noise and timesteps it needs from the global RNG, which is seeded per micro-batch; the engine
    moves it to the device it trains on, floating tensors cast to ``cfg.precision``'s dtype.
    ``loss_fn(engine_module, batch, step)`` returns ``(loss, logs)``; it must read every trained
    parameter through a forward call of ``engine_module`` (ZeRO-3 gathers parameters only there). Only parameters with
    ``requires_grad`` are optimised (or ``param_groups`` when given, for per-group LRs).
    Checkpoints go to ``ckpt_dir`` every ``cfg.checkpoint_every`` steps and at the end; an
    existing checkpoint there is resumed from. The trained weights end up in ``module``.
    ``prefetch(i)``, when given, is called with the index of the micro-batch after the current one
    before ``batch_fn`` builds the current one, so its data can be read in the background.
    """
    import deepspeed
    import torch.distributed as dist

    ckpt_dir = Path(ckpt_dir)
    ckpt_dir.mkdir(parents=True, exist_ok=True)
    rank, world = ensure_distributed()
    _quiet_deepspeed(cfg)
    if cfg.threads:
        torch.set_num_threads(cfg.threads)

    groups = list(param_groups) if param_groups is not None else [
        {"params": [p for p in module.parameters() if p.requires_grad]}
    ]
    if not any(len(list(g["params"])) for g in groups):
        raise ValueError(f"{name}: nothing to train (no parameter requires grad)")
    beta1, beta2 = cfg.betas
    optimizer = torch.optim.AdamW(
        groups, lr=lr, betas=(beta1, beta2), eps=cfg.eps, weight_decay=cfg.weight_decay
    )
    scheduler = torch.optim.lr_scheduler.LambdaLR(optimizer, warmup_constant(warmup_steps, cooldown_steps, steps))
    engine, _, _, _ = deepspeed.initialize(
        model=module,
        optimizer=optimizer,
        lr_scheduler=scheduler,
        config=deepspeed_config(cfg, world),
        dist_init_required=False,
    )

    checkpoints.load_safely(engine.checkpoint_engine)
    result = TrainResult()
    start = 0
    found = checkpoints.newest_intact(ckpt_dir)
    for line in found.skipped:
        log.warning("%s: %s", name, line)
    if found.step is not None:
        _, client = engine.load_checkpoint(str(ckpt_dir), tag=checkpoints.tag_of(found.step))
        client = client or {}
        start = int(client.get("step", found.step))
        result.history = list(client.get("history", []))
        result.resumed_from = start
        log.info("%s: resumed from checkpoint at step %d", name, start)
    elif found.skipped:
        log.warning("%s: no intact checkpoint in %s; starting from step 0", name, ckpt_dir)
    last_saved = found.step

    def save(step: int) -> None:
        nonlocal last_saved
        tag = checkpoints.tag_of(step)
        checkpoints.discard(ckpt_dir, step)  # a damaged one passed over on resume
        try:
            engine.save_checkpoint(str(ckpt_dir), tag=tag, save_latest=False,
                                   client_state={"step": step, "history": result.history})
            checkpoints.seal(ckpt_dir / tag, step)
        except BaseException:
            # Unsealed, it would be passed over on resume anyway; don't leave the partial files.
            shutil.rmtree(ckpt_dir / tag, ignore_errors=True)
            raise
        last_saved = step
        checkpoints.prune(ckpt_dir, cfg.keep_checkpoints)

    def last_good() -> str:
        return f"{checkpoints.tag_of(last_saved)} in {ckpt_dir}" if last_saved is not None else "none yet"

    from prunekit.placement import compute_dtype, move

    device, dtype = engine.device, compute_dtype(cfg.precision)
    on_gpu = torch.device(device).type == "cuda"
    if on_gpu:
        torch.cuda.reset_peak_memory_stats(device)
    clock = time.perf_counter()
    engine.train()
    for step in range(start, steps):
        logs_sum: dict[str, float] = {}
        loss_sum = 0.0
        lr_used = optimizer.param_groups[0]["lr"]
        for micro in range(cfg.grad_accum):
            index = global_micro_index(step, micro, rank, world, cfg.grad_accum)
            if prefetch is not None and step + (micro + 1) // cfg.grad_accum < steps:
                later = (step, micro + 1) if micro + 1 < cfg.grad_accum else (step + 1, 0)
                prefetch(global_micro_index(*later, rank, world, cfg.grad_accum))
            torch.manual_seed(seed * 1_000_003 + index)
            batch = move(batch_fn(index), device, dtype)
            with _engine_forward(engine):
                loss, logs = loss_fn(engine.module, batch, step)
            finite = torch.tensor([1.0 if bool(torch.isfinite(loss.detach()).all()) else 0.0])
            if world > 1:
                dist.all_reduce(finite, op=dist.ReduceOp.MIN)
            if finite.item() < 1:
                raise NonFiniteLossError(
                    f"{name}: loss became {loss.detach().float().mean().item()} at step {step + 1} "
                    f"(micro-batch {micro}); stopped, step not saved. Last good checkpoint: {last_good()}"
                )
            engine.backward(loss)
            engine.step()
            loss_sum += float(loss.detach())
            for k, v in logs.items():
                logs_sum[k] = logs_sum.get(k, 0.0) + float(v)
        _check_update(engine, cfg, name, step, world, last_good)
        values = torch.tensor([loss_sum, *logs_sum.values()], dtype=torch.float64) / cfg.grad_accum
        if world > 1:  # log the mean over ranks, so every rank records the same history
            dist.all_reduce(values)
            values /= world
        record = {"step": step + 1, "loss": float(values[0]), "lr": lr_used}
        record.update({k: float(v) for k, v in zip(logs_sum, values[1:])})
        result.history.append(record)
        if on_step is not None:
            on_step(step + 1, record)
        if (step + 1) % cfg.log_every == 0 or step + 1 == steps:
            log.debug("%s step %d: %s", name, step + 1, {k: round(v, 6) for k, v in record.items()})
        if (step + 1) % cfg.checkpoint_every == 0 or step + 1 == steps:
            save(step + 1)
    result.steps = steps
    if steps > start:
        result.seconds_per_step = (time.perf_counter() - clock) / (steps - start)
    if on_gpu:
        result.peak_memory_gib = torch.cuda.max_memory_allocated(device) / 2**30
    result.state_dict = _full_state_dict(engine, cfg)
    engine.destroy()  # its hooks and optimizer state go; the module stays usable
    if cfg.zero_stage == 3:
        # ZeRO-3 left every parameter partitioned (empty on this rank): put the full weights back.
        _replace_parameters(module, result.state_dict)
    return result


def _check_update(engine: Any, cfg: EngineConfig, name: str, step: int, world: int,
                  last_good: Callable[[], str]) -> None:
    """Stop before a step whose gradients or updated parameters are not finite can be saved."""
    import torch.distributed as dist

    bad, where = _nonfinite_parameters(engine)
    norm = engine.get_global_grad_norm() if cfg.precision != "fp16" else None  # fp16: the loss scaler skips
    norm = float(norm) if norm is not None else 0.0
    flags = torch.tensor([float(bad), 0.0 if math.isfinite(norm) else 1.0])
    if world > 1:
        dist.all_reduce(flags, op=dist.ReduceOp.MAX)
    if flags[0] == 0 and flags[1] == 0:
        return
    what = (f"{int(flags[0])} non-finite parameter values" + (f" (first in {where})" if where else "")
            if flags[0] else f"gradient norm {norm}")
    raise NonFiniteLossError(
        f"{name}: step {step + 1} produced {what}; stopped, step not saved. "
        f"Last good checkpoint: {last_good()}"
    )


def _replace_parameters(module: torch.nn.Module, state: dict[str, torch.Tensor]) -> None:
    """New parameter objects holding ``state`` (``load_state_dict`` refuses the partitioned shapes)."""
    for name, param in list(module.named_parameters()):
        owner_name, _, leaf = name.rpartition(".")
        owner = module.get_submodule(owner_name) if owner_name else module
        owner._parameters[leaf] = torch.nn.Parameter(state[name], requires_grad=param.requires_grad)


def _full_state_dict(engine: Any, cfg: EngineConfig) -> dict[str, torch.Tensor]:
    if cfg.zero_stage == 3:
        import deepspeed

        params = list(engine.module.parameters())
        with deepspeed.zero.GatheredParameters(params, modifier_rank=None):
            return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}
    return {k: v.detach().clone() for k, v in engine.module.state_dict().items()}


@contextmanager
def _engine_forward(engine: Any) -> Iterator[None]:
    """What ``DeepSpeedEngine.forward`` does around a forward call, for a loss that calls the module
    itself (a loss reads several submodules, or the module twice). ZeRO-3 counts micro-steps there:
    without it every backward overwrote the accumulated gradient, so with ``grad_accum`` > 1 only the
    last micro-batch's gradient was applied. It also lets ZeRO-3 gather a parameter a module reads
    from a child outside the child's forward (DeepSpeed's external-parameter discovery)."""
    clear = getattr(engine.optimizer, "clear_backward_seen_flag", None)
    if callable(clear):
        clear()
    engine._forward_prologue((), {})
    try:
        yield
    finally:
        engine._forward_epilogue()


def micro_batch_indices(n_items: int, micro_batch: int, index: int, seed: int = 0) -> list[int]:
    """Items of micro-batch ``index``: epochs over a seeded permutation, deterministic in ``index``."""
    if n_items <= 0:
        raise ValueError("the dataset is empty")
    start = index * micro_batch
    out: list[int] = []
    while len(out) < micro_batch:
        epoch, offset = divmod(start + len(out), n_items)
        g = torch.Generator().manual_seed(seed * 1_000_003 + epoch)
        perm = torch.randperm(n_items, generator=g)
        take = min(micro_batch - len(out), n_items - offset)
        out.extend(perm[offset : offset + take].tolist())
    return out


def steps_for_epochs(n_items: int, micro_batch: int, grad_accum: int, world: int, epochs: float) -> int:
    return max(1, math.ceil(epochs * n_items / (micro_batch * grad_accum * world)))
