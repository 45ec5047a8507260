"""The ``engine:`` recipe section. Kept apart from ``engine.py`` so validation never imports DeepSpeed."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from prunekit.config import option


@dataclass
class EngineConfig:
    """How training runs: DeepSpeed ZeRO stage, batch shape, precision, optimizer defaults."""

    zero_stage: int = option(0, ge=0, le=3, help="DeepSpeed ZeRO stage (0 = plain data parallel)")
    micro_batch: int = option(8, ge=1, help="samples per process per forward")
    grad_accum: int = option(1, ge=1, help="micro-batches per optimizer step")
    precision: Literal["fp32", "bf16", "fp16"] = option("fp32", help="fp16 needs a GPU")
    grad_clip: float = option(1.0, ge=0, help="global gradient-norm clip (0 = off)")
    weight_decay: float = option(0.01, ge=0)
    betas: tuple[float, float] = option((0.9, 0.999))
    eps: float = option(1e-8, gt=0)
    checkpoint_every: int = option(100, ge=1, help="optimizer steps between checkpoints")
    keep_checkpoints: int = option(2, ge=1, help="how many recent checkpoints to keep")
    log_every: int = option(10, ge=1, help="optimizer steps between log lines")
    cpu_shm_comm: bool = option(False, help="build DeepSpeed's shared-memory all-reduce op on CPU (~40 s once)")
    threads: int = option(0, ge=0, help="torch intra-op threads on CPU (0 = torch's default)")
