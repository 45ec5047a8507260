"""A folder of images with a ``metadata.jsonl`` (the Hugging Face ImageFolder convention)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunekit.config import option


@dataclass
class ImageFolderConfig:
    root: str = option(help="folder holding the images and metadata.jsonl")
    caption_column: str = "text"
    image_column: str = "file_name"
    resolution: int = option(256, ge=8, help="images are resized (shorter side) and centre-cropped")
    limit: int = option(0, ge=0, help="use only the first N samples (0 = all)")

    def preflight(self) -> list[str]:
        meta = Path(self.root) / "metadata.jsonl"
        if not meta.is_file():
            return [f"dataset folder {self.root} has no metadata.jsonl (set dataset.root=DIR)"]
        return []


def load_image(path: Path, resolution: int) -> Any:
    """RGB image → float tensor (3, R, R) in [-1, 1]: resize shorter side, centre crop."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as im:
        im = im.convert("RGB")
        w, h = im.size
        s = resolution / min(w, h)
        im = im.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.BICUBIC)
        w, h = im.size
        left, top = (w - resolution) // 2, (h - resolution) // 2
        im = im.crop((left, top, left + resolution, top + resolution))
        arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class ImageFolder:
    def __init__(self, config: ImageFolderConfig) -> None:
        self.root = Path(config.root)
        self.resolution = config.resolution
        rows = []
        for n, line in enumerate((self.root / "metadata.jsonl").read_text().splitlines(), 1):
            if not line.strip():
                continue
            row = json.loads(line)
            if config.image_column not in row or config.caption_column not in row:
                raise ValueError(
                    f"{self.root / 'metadata.jsonl'}:{n}: needs keys {config.image_column!r} and {config.caption_column!r}"
                )
            rows.append((row[config.image_column], str(row[config.caption_column])))
        if config.limit:
            rows = rows[: config.limit]
        self.files = [self.root / f for f, _ in rows]
        self.prompts = [c for _, c in rows]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        return {"prompt": self.prompts[index], "image": load_image(self.files[index], self.resolution)}


def build_imagefolder(config: ImageFolderConfig) -> ImageFolder:
    return ImageFolder(config)
