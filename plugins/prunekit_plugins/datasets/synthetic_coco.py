"""Synthetic data in MS-COCO's on-disk format, so the paper recipes' data path runs anywhere.

``write_synthetic_coco(folder, images=N)`` writes ``folder/images/COCO_synthetic_%012d.jpg`` and
``folder/captions.json`` (the ``captions_*.json`` layout: ``images`` with ``id`` / ``file_name``,
``annotations`` with ``id`` / ``image_id`` / ``caption``), ``captions_per_image`` captions per image,
like COCO's five. Images are the coloured shapes of the ``shapes`` dataset; captions vary their
wording. ``bad`` plants damaged samples (a truncated JPEG, a zero-byte file, a text file named
``.jpg``, a missing file, an empty caption) for tests of the skip-and-count path.

    python -m prunekit_plugins.datasets.synthetic_coco OUT --images 400 [--captions-per-image 5]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

TEMPLATES = ("a {size} {color} {shape}", "a {color} {shape} on a light background",
             "one {size} {shape}, coloured {color}", "a picture of a {color} {shape}",
             "a {shape} that is {size} and {color}")
BAD_KINDS = ("truncated", "zero_bytes", "not_an_image", "missing", "empty_caption")


def write_synthetic_coco(folder: str | Path, *, images: int, captions_per_image: int = 5, resolution: int = 64,
                         seed: int = 0, bad: bool = False, image_dir: str = "images",
                         captions_file: str = "captions.json") -> dict[str, Any]:
    """Write the dataset; returns ``{"root", "annotations", "images", "captions", "bad"}``."""
    import numpy as np
    from PIL import Image

    from prunekit_plugins.datasets.shapes import COLORS, SHAPES, SIZES, render

    folder = Path(folder)
    root = folder / image_dir
    root.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    entries: list[dict[str, Any]] = []  # COCO "images" records
    annotations: list[dict[str, Any]] = []
    for k in range(images):
        image_id = k + 1
        shape, color = SHAPES[rng.integers(len(SHAPES))], list(COLORS)[rng.integers(len(COLORS))]
        size = list(SIZES)[rng.integers(len(SIZES))]
        name = f"COCO_synthetic_{image_id:012d}.jpg"
        Image.fromarray(render(shape, color, size, resolution, np.random.default_rng([seed, k]))).save(
            root / name, quality=92)
        entries.append({"id": image_id, "file_name": name, "height": resolution, "width": resolution})
        for c in range(captions_per_image):
            caption = TEMPLATES[(k + c) % len(TEMPLATES)].format(size=size, color=color, shape=shape)
            annotations.append({"id": image_id * 10 + c, "image_id": image_id, "caption": caption})
    planted: dict[str, str] = {}
    if bad:
        if images < len(BAD_KINDS) + 1:
            raise ValueError(f"bad=True needs at least {len(BAD_KINDS) + 1} images")
        victims = {kind: entries[i + 1] for i, kind in enumerate(BAD_KINDS)}
        data = (root / victims["truncated"]["file_name"]).read_bytes()
        (root / victims["truncated"]["file_name"]).write_bytes(data[: len(data) // 3])
        (root / victims["zero_bytes"]["file_name"]).write_bytes(b"")
        (root / victims["not_an_image"]["file_name"]).write_text("<html>404 not found</html>")
        (root / victims["missing"]["file_name"]).unlink()
        empty_id = victims["empty_caption"]["id"]
        for a in annotations:
            if a["image_id"] == empty_id:
                a["caption"] = "   "
        planted = {kind: entry["file_name"] for kind, entry in victims.items()}
    (folder / captions_file).write_text(json.dumps({
        "info": {"description": "prunekit synthetic COCO-format captions", "seed": seed},
        "images": entries, "annotations": annotations}))
    return {"root": str(root), "annotations": str(folder / captions_file), "images": images,
            "captions": len(annotations), "bad": planted}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Write synthetic MS-COCO-format captioned images.")
    parser.add_argument("output")
    parser.add_argument("--images", type=int, required=True)
    parser.add_argument("--captions-per-image", type=int, default=5)
    parser.add_argument("--resolution", type=int, default=64)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--bad", action="store_true", help="plant one damaged sample of each kind")
    args = parser.parse_args(argv)
    out = write_synthetic_coco(args.output, images=args.images, captions_per_image=args.captions_per_image,
                               resolution=args.resolution, seed=args.seed, bad=args.bad)
    print(f"dataset.root={out['root']} dataset.annotations={out['annotations']} "
          f"({out['images']} images, {out['captions']} captions)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
