"""Training checkpoints that are verified before they are trusted.

A checkpoint is a ``step_N/`` folder that DeepSpeed filled (one or more ``.pt`` files per rank).
prunekit seals it once every rank has written its part: ``manifest.json`` records the size and
SHA-256 of every file, and only then does ``latest`` name it. On resume the newest sealed
checkpoint whose files still match their digests is used; a checkpoint that was never sealed
(killed mid-write), or whose files were truncated, flipped or replaced since, is reported in one
line and passed over for the next older one.

Loading never unpickles arbitrary objects: DeepSpeed's ``.pt`` files are read with
``torch.load(weights_only=True)``, allowing only the few DeepSpeed classes its ZeRO optimizer
states hold. A file that names anything else is refused, even when its digest matches.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunekit import distributed
from prunekit.errors import CheckpointError

log = logging.getLogger("prunekit")

MANIFEST = "manifest.json"
LATEST = "latest"
TAG_PREFIX = "step_"


def tag_of(step: int) -> str:
    return f"{TAG_PREFIX}{step}"


def step_of(tag: str) -> int | None:
    if not tag.startswith(TAG_PREFIX):
        return None
    rest = tag[len(TAG_PREFIX):]
    return int(rest) if rest.isdigit() else None


def _digest(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _files(folder: Path) -> list[str]:
    return sorted(
        str(p.relative_to(folder)) for p in folder.rglob("*") if p.is_file() and p.name != MANIFEST
    )


def _atomic_write(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    try:
        tmp.write_text(text)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def seal(folder: Path, step: int) -> None:
    """Record the size and digest of every file of a complete checkpoint; collective.

    Each rank hashes its share of the files (a ZeRO checkpoint of a large model is many GB), rank 0
    writes the manifest and then points ``latest`` at the checkpoint.
    """
    names = _files(folder) if distributed.is_main() else []  # the other ranks receive rank 0's list
    names = distributed.broadcast(names)
    mine = {n: {"bytes": (folder / n).stat().st_size, "sha256": _digest(folder / n)}
            for n in names[distributed.rank()::distributed.world_size()]}
    entries: dict[str, Any] = {}
    for part in distributed.all_gather(mine):
        entries.update(part)
    if distributed.is_main():
        manifest = {"step": step, "files": {n: entries[n] for n in sorted(entries)}}
        _atomic_write(folder / MANIFEST, json.dumps(manifest, indent=1) + "\n")
        _atomic_write(folder.parent / LATEST, folder.name + "\n")
    distributed.barrier()


def problem(folder: Path) -> str | None:
    """Why ``folder`` cannot be resumed from (None when it is intact); collective."""
    manifest_file = folder / MANIFEST
    found: str | None = None
    files: dict[str, Any] = {}
    if distributed.is_main():
        try:
            manifest = json.loads(manifest_file.read_text())
            files = dict(manifest["files"])
            if manifest.get("step") != step_of(folder.name):
                found = f"{MANIFEST} is for step {manifest.get('step')}"
        except FileNotFoundError:
            found = f"never completed (no {MANIFEST}: the run stopped while writing it)"
        except (ValueError, KeyError, TypeError, OSError) as exc:
            found = f"{MANIFEST} unreadable ({exc})"
        if found is None:
            extra = sorted(set(_files(folder)) - set(files))
            if extra:
                found = f"{extra[0]}: not in {MANIFEST}"
        if found is None:
            for name, entry in files.items():
                path = folder / name
                if not path.is_file():
                    found = f"{name}: missing"
                    break
                size = path.stat().st_size
                if size != entry["bytes"]:
                    found = f"{name}: {size} bytes, {entry['bytes']} when written"
                    break
    found, files = distributed.broadcast((found, files))
    if found is not None:
        return found
    names = sorted(files)[distributed.rank()::distributed.world_size()]
    mine = next((f"{n}: contents changed since written (SHA-256 mismatch)" for n in names
                 if _digest(folder / n) != files[n]["sha256"]), None)
    return next((p for p in distributed.all_gather(mine) if p is not None), None)


@dataclass
class Resumable:
    step: int | None
    skipped: list[str]  # one line per newer checkpoint that was passed over


def newest_intact(ckpt_dir: Path) -> Resumable:
    """The newest checkpoint under ``ckpt_dir`` that verifies; collective (every rank agrees)."""
    skipped: list[str] = []
    tags: list[str] = []
    if ckpt_dir.is_dir():
        steps = {p.name: step for p in ckpt_dir.iterdir() if p.is_dir() and (step := step_of(p.name)) is not None}
        tags = sorted(steps, key=steps.__getitem__, reverse=True)
    tags = distributed.broadcast(tags)
    latest_file = ckpt_dir / LATEST
    if distributed.is_main() and latest_file.exists():
        named = latest_file.read_text().strip()
        if named not in tags:
            skipped.append(f"{ckpt_dir / LATEST} names {named}, which does not exist")
    for tag in tags:
        why = problem(ckpt_dir / tag)
        if why is None:
            return Resumable(step_of(tag), skipped)
        skipped.append(f"checkpoint {ckpt_dir / tag} is damaged: {why}")
    return Resumable(None, skipped)


def discard(ckpt_dir: Path, step: int) -> None:
    """Remove a checkpoint folder (rank 0), e.g. a damaged one about to be written again."""
    if distributed.is_main():
        shutil.rmtree(ckpt_dir / tag_of(step), ignore_errors=True)
    distributed.barrier()


def prune(ckpt_dir: Path, keep: int) -> None:
    """Keep the ``keep`` newest checkpoints (rank 0)."""
    if not distributed.is_main():
        return
    steps = {p: step for p in ckpt_dir.iterdir() if p.is_dir() and (step := step_of(p.name)) is not None}
    tags = sorted(steps, key=steps.__getitem__)
    for old in tags[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


# -- loading without pickle ----------------------------------------------------------------------

def _allowed_globals() -> list[Any]:
    """The non-tensor classes DeepSpeed's own checkpoints hold (loss scaler, ZeRO stage, the
    fragment map of a ZeRO-1/2 partition); nothing that runs code when rebuilt."""
    from deepspeed.runtime.fp16.loss_scaler import DynamicLossScaler, LossScaler
    from deepspeed.runtime.zero.config import ZeroStageEnum
    from deepspeed.utils.tensor_fragment import fragment_address

    return [LossScaler, DynamicLossScaler, ZeroStageEnum, fragment_address]


def safe_load(path: str | Path, map_location: Any = None) -> Any:
    """``torch.load`` of a DeepSpeed checkpoint file with ``weights_only=True``."""
    import pickle

    import torch

    try:
        with torch.serialization.safe_globals(_allowed_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CheckpointError(
            f"refusing to load {path}: it holds more than tensors and DeepSpeed's checkpoint "
            f"state ({first}); it was not written by prunekit — delete that checkpoint folder to "
            "resume from an older one"
        ) from None


def load_safely(checkpoint_engine: Any) -> Any:
    """Make a DeepSpeed checkpoint engine load through :func:`safe_load` (DeepSpeed's own calls
    ``torch.load(weights_only=False)``); returns it."""
    checkpoint_engine.load = lambda path, map_location=None: safe_load(path, map_location)
    return checkpoint_engine
