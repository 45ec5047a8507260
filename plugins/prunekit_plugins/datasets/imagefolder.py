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
    """Rows of ``metadata.jsonl``. A line that is not UTF-8, not JSON or lacks the image or caption key
    is rejected (counted by reason in ``rejected``, the first lines named in ``rejected_examples``),
    not fatal; unreadable images are skipped when the encode stage loads them."""

    def __init__(self, config: ImageFolderConfig) -> None:
        self.root = Path(config.root)
        self.resolution = config.resolution
        meta = self.root / "metadata.jsonl"
        problems: list[str] = []
        rows = []
        for n, raw in enumerate(meta.read_bytes().splitlines(), 1):
            if not raw.strip():
                continue
            try:
                row = json.loads(raw.decode("utf-8"))
            except UnicodeDecodeError:
                problems.append(f"{meta}:{n}: not UTF-8")
                continue
            except json.JSONDecodeError as exc:
                problems.append(f"{meta}:{n}: not JSON ({exc.msg})")
                continue
            if not isinstance(row, dict) or config.image_column not in row or config.caption_column not in row:
                problems.append(f"{meta}:{n}: needs keys {config.image_column!r} and {config.caption_column!r}")
                continue
            rows.append((row[config.image_column], str(row[config.caption_column])))
        self.rejected = {"bad_metadata": len(problems)} if problems else {}
        self.rejected_examples = problems[:5]
        if config.limit:
            rows = rows[: config.limit]
        self.files = [self.root / f for f, _ in rows]
        self.prompts = [c for _, c in rows]

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from prunekit_plugins.datasets._images import MissingImageError, decode_image

        path = self.files[index]
        try:
            image = decode_image(path, self.resolution, str(path))
        except FileNotFoundError:
            raise MissingImageError(f"image {path} listed in {self.root / 'metadata.jsonl'} not found") from None
        return {"prompt": self.prompts[index], "image": image}


def build_imagefolder(config: ImageFolderConfig) -> ImageFolder:
    return ImageFolder(config)
