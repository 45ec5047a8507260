"""MS-COCO Captions (2014): an image folder plus the official ``captions_*.json``.

The annotation file holds ``images: [{id, file_name, ...}]`` and ``annotations: [{id, image_id,
caption}]``, about five captions per image. By default every caption is its own sample (as in
the APTP paper), in annotation-id order; ``one_caption_per_image`` keeps one per image instead.
Images are not checked at construction (400k ``stat`` calls are slow): a missing one is reported,
by name, when it is loaded.
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunekit.config import option
from prunekit_plugins.datasets._images import DatasetError, MissingImageError, Rejects, decode_image


@dataclass
class CocoConfig:
    root: str = option(help="image folder, e.g. /data/coco/train2014")
    annotations: str = option(help="captions JSON, e.g. /data/coco/annotations/captions_train2014.json")
    resolution: int = option(256, ge=8, help="images are resized (shorter side) and centre-cropped")
    limit: int = option(0, ge=0, help="use only the first N samples (0 = all)")
    one_caption_per_image: bool = option(
        False, help="one sample per image (in image-id order) instead of one per caption"
    )
    seed: int = option(0, ge=0, help="which caption represents an image when one_caption_per_image")

    def preflight(self) -> list[str]:
        problems = []
        if not Path(self.annotations).is_file():
            problems.append(f"COCO annotations {self.annotations} not found (set dataset.annotations=PATH)")
        if not Path(self.root).is_dir():
            problems.append(f"COCO image folder {self.root} not found (set dataset.root=DIR)")
        return problems

    def probe_samples(self) -> list[str]:
        """``[]`` once a caption's image reads (the annotations are parsed once: about a second for
        COCO's 414k captions; images are opened until the first readable one, a few tens at most)."""
        from prunekit_plugins.datasets._images import probe

        rejects = Rejects()
        try:
            files, rows = read_captions(Path(self.annotations), rejects)
        except DatasetError as exc:
            return [str(exc)]
        samples = ((f"{self.annotations} annotation {a} ({files[i]})", caption, Path(self.root) / files[i])
                   for a, i, caption in rows)
        return probe(samples, f"COCO data {self.annotations} with images in {self.root}", rejects=rejects)


def read_captions(path: Path, rejects: Rejects | None = None) -> tuple[dict[int, str], list[tuple[int, int, str]]]:
    """``({image_id: file_name}, [(annotation_id, image_id, caption), ...])`` sorted by annotation
    id, captions stripped; errors name the file and the offending entry. With ``rejects``, an
    annotation lacking ``id``/``image_id``/``caption`` (or whose caption is not a string) is skipped
    and counted there as ``bad_metadata`` instead of stopping."""
    try:
        data = json.loads(path.read_bytes().decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise DatasetError(f"{path}: not UTF-8 (byte {exc.start}: {exc.reason})") from None
    except json.JSONDecodeError as exc:
        raise DatasetError(f"{path}: not valid JSON ({exc})") from exc
    if not isinstance(data, dict) or "images" not in data or "annotations" not in data:
        raise DatasetError(f"{path}: not a COCO captions file (needs 'images' and 'annotations' lists)")
    try:
        files = {int(im["id"]): str(im["file_name"]) for im in data["images"]}
        rows = []
        for n, a in enumerate(data["annotations"]):
            try:
                if not isinstance(a["caption"], str):
                    raise TypeError(f"caption is {type(a['caption']).__name__}, not a string")
                rows.append((int(a["id"]), int(a["image_id"]), a["caption"].strip()))
            except (KeyError, TypeError, ValueError) as exc:
                if rejects is None:
                    raise
                rejects.add("bad_metadata", f"{path}: annotations[{n}] is malformed ({exc!r}): "
                                            f"{json.dumps(a)[:200]}")
    except (KeyError, TypeError, ValueError) as exc:
        raise DatasetError(
            f"{path}: malformed entry ({exc!r}); images need 'id' and 'file_name', "
            "annotations need 'id', 'image_id' and 'caption'"
        ) from exc
    unknown = next((r for r in rows if r[1] not in files), None)
    if unknown is not None:
        raise DatasetError(f"{path}: annotation {unknown[0]} refers to image_id {unknown[1]}, which is not in 'images'")
    rows.sort(key=lambda r: r[0])
    return files, rows


class Coco:
    def __init__(self, config: CocoConfig) -> None:
        self.root = Path(config.root)
        self.annotations = Path(config.annotations)
        self.resolution = config.resolution
        rejects = Rejects()
        files, rows = read_captions(self.annotations, rejects)
        self.rejected, self.rejected_examples = dict(rejects.counts), rejects.examples
        if config.one_caption_per_image:
            by_image: dict[int, list[str]] = {}
            for _, image_id, caption in rows:  # annotation-id order within an image
                by_image.setdefault(image_id, []).append(caption)
            rng = random.Random(config.seed)
            samples = [(i, rng.choice(by_image[i])) for i in sorted(by_image)]
        else:
            samples = [(image_id, caption) for _, image_id, caption in rows]
        if config.limit:
            samples = samples[: config.limit]
        self.image_ids = [i for i, _ in samples]
        self.file_names = files  # image_id -> file name; paths are built on access
        self.prompts = [c for _, c in samples]

    def file(self, index: int) -> Path:
        return self.root / self.file_names[self.image_ids[index]]

    def where(self, index: int) -> str:
        """What a skip message names for sample ``index``: its image and annotation file."""
        return f"{self.file(index)} (image_id {self.image_ids[index]} in {self.annotations})"

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.file(index)
        try:
            image = decode_image(path, self.resolution, str(path))
        except FileNotFoundError:
            raise MissingImageError(
                f"COCO image {path} not found (image_id {self.image_ids[index]} in {self.annotations}; "
                "is dataset.root the matching image folder?)"
            ) from None
        return {"prompt": self.prompts[index], "image": image}


def build_coco(config: CocoConfig) -> Coco:
    return Coco(config)
