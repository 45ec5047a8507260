"""Images an evaluation reads chunk by chunk: generated ones on disk (written as generation goes,
resumable), real ones straight from the eval dataset, or a tensor already in memory.

An image source has ``len(source)``, ``size`` (pixels of its images' side, None when empty) and
``take(positions) -> uint8 tensor (n, 3, H, W)``; metrics never need all images at once.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

BATCHES_DIR = "batches"


class TensorImages:
    def __init__(self, images: torch.Tensor) -> None:
        self.images = images

    def __len__(self) -> int:
        return len(self.images)

    @property
    def size(self) -> int | None:
        return int(self.images.shape[-1]) if len(self.images) else None

    def take(self, positions: Sequence[int]) -> torch.Tensor:
        return self.images[torch.as_tensor(list(positions), dtype=torch.long)]


class DatasetImages:
    """Real images of rows ``indices`` of a captioned-image dataset, decoded when taken."""

    def __init__(self, dataset: Any, indices: Sequence[int]) -> None:
        self.dataset, self.indices = dataset, list(indices)
        self._size: int | None = None

    def __len__(self) -> int:
        return len(self.indices)

    @property
    def size(self) -> int | None:
        if self._size is None and self.indices:
            self._size = int(self.take([0]).shape[-1])
        return self._size

    def take(self, positions: Sequence[int]) -> torch.Tensor:
        images = [self.dataset[self.indices[p]]["image"] for p in positions]
        return ((torch.stack(images).float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


class FolderImages:
    """``folder/000000.png ...``: the images :func:`generate_to_folder` wrote."""

    def __init__(self, folder: str | Path, count: int) -> None:
        self.folder, self.count = Path(folder), count

    def __len__(self) -> int:
        return self.count

    def path(self, position: int) -> Path:
        return self.folder / f"{position:06d}.png"

    @property
    def size(self) -> int | None:
        return int(self.take([0]).shape[-1]) if self.count else None

    def take(self, positions: Sequence[int]) -> torch.Tensor:
        import numpy as np
        from PIL import Image

        arrays = []
        for p in positions:
            with Image.open(self.path(p)) as im:
                arrays.append(np.asarray(im.convert("RGB")))
        return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def _atomic_png(array: Any, path: Path) -> None:
    from PIL import Image

    from prunekit.run import atomic_target

    with atomic_target(path) as tmp:
        Image.fromarray(array).save(tmp, format="PNG")


def generate_to_folder(
    call: Callable[[list[str], list[int]], tuple[list[Any], list[int] | None]],
    prompts: Sequence[str],
    folder: str | Path,
    *,
    batch_size: int,
    seed: int,
    collective: bool = False,
    log: logging.Logger | None = None,
) -> tuple[FolderImages, list[int] | None, float]:
    """Generate image ``i`` of ``prompts`` from seed ``seed + i`` into ``folder/{i:06d}.png``.

    ``call(prompts, seeds)`` returns (uint8 HxWx3 arrays, experts or None) for one batch. Batch ``b``
    is done once ``folder/batches/{b:05d}.json`` exists (written after its images), so a killed
    evaluation resumes at the first batch not done. ``collective``: batches are dealt to the ranks
    round-robin, and every rank returns once all are done. Returns the image source, the expert of
    each image (None for a single pipeline) and the generation seconds summed over batches.
    """
    from prunekit import distributed
    from prunekit.run import atomic_write_text

    folder = Path(folder)
    (folder / BATCHES_DIR).mkdir(parents=True, exist_ok=True)
    prompts = list(prompts)
    n_batches = -(-len(prompts) // batch_size)
    rank, world = (distributed.rank(), distributed.world_size()) if collective else (0, 1)
    done = 0
    for b in range(rank, n_batches, world):
        record = folder / BATCHES_DIR / f"{b:05d}.json"
        if record.is_file():
            continue
        first = b * batch_size
        chunk = prompts[first:first + batch_size]
        start = time.perf_counter()
        images, experts = call(chunk, [seed + first + k for k in range(len(chunk))])
        seconds = time.perf_counter() - start
        for k, image in enumerate(images):
            _atomic_png(image, folder / f"{first + k:06d}.png")
        atomic_write_text(record, json.dumps({"first": first, "count": len(chunk), "experts": experts,
                                              "seconds": seconds}))
        done += 1
        if log is not None:
            log.debug("generated batch %d/%d (%d images)", b + 1, n_batches, len(chunk))
    if collective:
        distributed.barrier()
    experts_all: list[int] = []
    routed, seconds_total = False, 0.0
    for b in range(n_batches):
        info = json.loads((folder / BATCHES_DIR / f"{b:05d}.json").read_text())
        seconds_total += float(info["seconds"])
        if info["experts"] is not None:
            routed = True
            experts_all.extend(int(e) for e in info["experts"])
    return FolderImages(folder, len(prompts)), (experts_all if routed else None), seconds_total
