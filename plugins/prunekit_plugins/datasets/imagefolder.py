"""A folder of images with a ``metadata.jsonl`` (the Hugging Face ImageFolder convention)."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from prunekit.config import option


@dataclass
class ImageFolderConfig:
    root: str = option(help="folder holding the images and metadata.jsonl")
    caption_column: str = "text"
    image_column: str = "file_name"
    resolution: int = option(256, ge=8, help="images are resized (shorter side) and centre-cropped")
    limit: int = option(0, ge=0, help="use only the first N samples (0 = all)")

    def preflight(self) -> list[str]:
        if not Path(self.root).is_dir():
            return [f"dataset folder {self.root} does not exist (set dataset.root=DIR)"]
        meta = Path(self.root) / "metadata.jsonl"
        if not meta.is_file():
            return [f"dataset folder {self.root} has no metadata.jsonl (set dataset.root=DIR)"]
        return []

    def probe_samples(self) -> list[str]:
        """``[]`` once a line of metadata.jsonl names a readable image with a caption (lines read
        and images opened until the first such one, at most a few tens)."""
        from prunekit_plugins.datasets._images import probe

        meta = Path(self.root) / "metadata.jsonl"

        def samples() -> Any:
            with open(meta, "rb") as f:
                for n, raw in enumerate(f, 1):
                    if not raw.strip():
                        continue
                    row, problem = parse_line(raw, self.image_column, self.caption_column)
                    if row is None:
                        yield f"{meta}:{n}: {problem}", None, None
                    else:
                        yield f"{meta}:{n} ({row[0]})", row[1], Path(self.root) / row[0]

        return probe(samples(), f"dataset folder {self.root}")


def parse_line(raw: bytes, image_column: str, caption_column: str) -> tuple[tuple[str, str] | None, str]:
    """``((file name, caption), "")`` from one metadata.jsonl line, or ``(None, why not)``."""
    try:
        row = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        return None, "not UTF-8"
    except json.JSONDecodeError as exc:
        return None, f"not JSON ({exc.msg})"
    if not isinstance(row, dict) or image_column not in row or caption_column not in row:
        return None, f"needs keys {image_column!r} and {caption_column!r}"
    if not isinstance(row[image_column], str) or not isinstance(row[caption_column], str):
        return None, f"{image_column!r} and {caption_column!r} must be strings"
    return (row[image_column], row[caption_column]), ""


def load_image(path: Path | IO[bytes], resolution: int) -> Any:
    """RGB image (a file, or an open binary stream) → float tensor (3, R, R) in [-1, 1]: resize shorter
    side, centre crop."""
    import numpy as np
    import torch
    from PIL import Image

    with Image.open(path) as opened:
        im = opened.convert("RGB")
        w, h = im.size
        s = resolution / min(w, h)
        im = im.resize((max(resolution, round(w * s)), max(resolution, round(h * s))), Image.Resampling.BICUBIC)
        w, h = im.size
        left, top = (w - resolution) // 2, (h - resolution) // 2
        im = im.crop((left, top, left + resolution, top + resolution))
        arr = np.asarray(im, dtype=np.float32) / 127.5 - 1.0
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class ImageFolder:
    """Rows of ``metadata.jsonl``. A line that is not UTF-8, not JSON or lacks the image or caption key
    (or holds no string there) is rejected (counted by reason in ``rejected``, the first lines named in
    ``rejected_examples``), not fatal; unreadable images and empty captions are skipped when the encode
    stage loads them."""

    def __init__(self, config: ImageFolderConfig) -> None:
        self.root = Path(config.root)
        self.resolution = config.resolution
        self.meta = meta = self.root / "metadata.jsonl"
        problems: list[str] = []
        rows = []
        with open(meta, "rb") as f:
            for n, raw in enumerate(f, 1):
                if not raw.strip():
                    continue
                row, problem = parse_line(raw, config.image_column, config.caption_column)
                if row is None:
                    problems.append(f"{meta}:{n}: {problem}")
                    continue
                rows.append((row[0], row[1], n))
        self.rejected = {"bad_metadata": len(problems)} if problems else {}
        self.rejected_examples = problems[:5]
        if config.limit:
            rows = rows[: config.limit]
        self.files = [self.root / f for f, _, _ in rows]
        self.prompts = [c for _, c, _ in rows]
        self.lines = [n for _, _, n in rows]  # metadata.jsonl line of each sample, for messages

    def where(self, index: int) -> str:
        """The metadata.jsonl line of sample ``index`` (what a skip message names)."""
        return f"{self.meta}:{self.lines[index]}"

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, Any]:
        from prunekit_plugins.datasets._images import MissingImageError, decode_image

        path = self.files[index]
        try:
            image = decode_image(path, self.resolution, f"{path} ({self.where(index)})")
        except FileNotFoundError:
            raise MissingImageError(f"image {path} listed at {self.where(index)} not found") from None
        return {"prompt": self.prompts[index], "image": image}


def build_imagefolder(config: ImageFolderConfig) -> ImageFolder:
    return ImageFolder(config)
