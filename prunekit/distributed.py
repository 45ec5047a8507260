"""Ranks: who runs, who writes, and how results move between processes.

One process group serves a whole run. Under a launcher (``torchrun``, the ``deepspeed`` launcher,
a scheduler that exports ``RANK``/``WORLD_SIZE``/``MASTER_ADDR``/``MASTER_PORT``) it is the
launcher's; a plain ``python`` process gets a one-rank gloo group through a file store, which needs
no free port and no MPI. Rank 0 owns the run directory: it alone writes files; the other ranks
compute alongside it and read what it wrote after a barrier.

Every helper here is a no-op (or the identity) in a one-rank world, so code that uses them runs
unchanged in a test process.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, TypeVar, cast

T = TypeVar("T")

LAUNCHER_VARIABLES = ("RANK", "WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def launched() -> bool:
    """True when a launcher started this process as one rank of several."""
    return all(k in os.environ for k in LAUNCHER_VARIABLES)


def _dist() -> Any:
    import torch.distributed as dist

    return dist


def initialized() -> bool:
    try:
        dist = _dist()
    except ImportError:  # pragma: no cover - torch always ships it
        return False
    return dist.is_available() and dist.is_initialized()


def init() -> tuple[int, int]:
    """Initialise the process group if needed; return ``(rank, world_size)``."""
    import torch

    dist = _dist()
    if not dist.is_initialized():
        if launched():
            # gloo also carries the run's object collectives (barriers, broadcasts of small
            # results); DeepSpeed's own NCCL traffic goes through the group it creates on top.
            backend = "nccl" if torch.cuda.is_available() else "gloo"
            if backend == "nccl":
                torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
            dist.init_process_group(backend)
        else:
            store = Path(tempfile.mkdtemp(prefix="prunekit-dist-")) / "store"
            dist.init_process_group("gloo", init_method=f"file://{store}", rank=0, world_size=1)
    # DeepSpeed reads LOCAL_RANK to pick its device. RANK/WORLD_SIZE are deliberately not exported:
    # child processes (a sweep point, a test's CLI call) would take them for a launcher's rendezvous.
    os.environ.setdefault("LOCAL_RANK", "0")
    return dist.get_rank(), dist.get_world_size()


def rank() -> int:
    if initialized():
        return _dist().get_rank()
    return int(os.environ.get("RANK", "0")) if launched() else 0


def world_size() -> int:
    if initialized():
        return _dist().get_world_size()
    return int(os.environ.get("WORLD_SIZE", "1")) if launched() else 1


def is_main() -> bool:
    return rank() == 0


def barrier() -> None:
    if initialized() and world_size() > 1:
        dist = _dist()
        if dist.get_backend() == "nccl":
            import torch

            dist.barrier(device_ids=[torch.cuda.current_device()])
        else:
            dist.barrier()


def shutdown() -> None:
    """End a launcher's process group once every rank is done with it (a no-op otherwise). Left to the
    interpreter's exit, gloo's threads can outlive it: a rank then aborts (``terminate called without
    an active exception``) after a run that completed, and the launcher reports the job failed."""
    if not (launched() and initialized()):
        return
    barrier()
    _dist().destroy_process_group()


def broadcast(obj: T, src: int = 0) -> T:
    """``obj`` as rank ``src`` has it, on every rank (picklable objects; small ones)."""
    if not initialized() or world_size() == 1:
        return obj
    box = [obj]
    _dist().broadcast_object_list(box, src=src)
    return box[0]


def all_gather(obj: T) -> list[T]:
    """Every rank's ``obj``, in rank order, on every rank."""
    if not initialized() or world_size() == 1:
        return [obj]
    out: list[Any] = [None] * world_size()
    _dist().all_gather_object(out, obj)
    return out


def shard(count: int, *, rank_: int | None = None, world: int | None = None) -> range:
    """This rank's contiguous share of ``range(count)``; shares differ by at most one item and
    concatenate, in rank order, to the whole range."""
    r = rank() if rank_ is None else rank_
    w = world_size() if world is None else world
    base, extra = divmod(count, w)
    start = r * base + min(r, extra)
    return range(start, start + base + (1 if r < extra else 0))


def run_on_main(fn: Callable[[], T]) -> T:
    """Run ``fn`` on rank 0 only and hand its (picklable) result to every rank.

    When ``fn`` raises on rank 0, the other ranks raise :class:`~prunekit.errors.PeerRankError`
    with the same message and exit code instead of waiting for a result that never comes.
    """
    if not initialized() or world_size() == 1:
        return fn()
    result: Any = None
    if is_main():
        try:
            result = fn()
        except BaseException as exc:
            broadcast(("error", str(exc), int(getattr(exc, "exit_code", 1))))
            raise
        broadcast(("ok", result, 0))
        return result
    # cast: the other ranks pass a placeholder and receive rank 0's (status, value, exit code).
    status, value, code = cast(tuple[str, Any, int], broadcast(None))
    if status == "error":
        from prunekit.errors import PeerRankError

        raise PeerRankError(value, code)
    return value


def gather_concat(parts: Sequence[Any]) -> list[Any]:
    """Flatten ``all_gather`` results: each rank contributes a list, the result is one list."""
    return [item for part in all_gather(list(parts)) for item in part]
