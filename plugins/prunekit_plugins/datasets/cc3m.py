"""Conceptual Captions 3M, in either of the two layouts a download leaves behind.

``format: tsv``: ``root`` is the official ``Train_GCC-training.tsv`` (``caption<TAB>url``, no
header) or a TSV with a header row naming a ``caption`` column; ``image_dir`` holds the
downloaded images, named by data-row index (``image_pattern``, img2dataset style
``{index:09d}.jpg``). Many CC3M URLs are dead, so rows whose image is missing are skipped,
counted and logged.

``format: webdataset``: ``root`` names ``.tar`` shards (a folder, one file, or a glob) whose
members are ``KEY.jpg``/``KEY.png``/``KEY.webp`` plus ``KEY.txt`` or ``KEY.json`` (with a
``caption`` key), read with :mod:`tarfile`. The index (shard, image offset, caption) is built
once; images are read by offset from per-shard file handles opened lazily, reopened after
pickling (DataLoader workers) and after a fork.
"""
from __future__ import annotations

import glob
import json
import logging
import os
import string
import tarfile
from array import array
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from prunekit.config import option
from prunekit_plugins.datasets._images import DatasetError, ExistingFiles, MissingImageError, decode_image

log = logging.getLogger("prunekit")

IMAGE_EXTS = (".jpg", ".jpeg", ".png", ".webp")
# img2dataset writes 10,000 samples per shard by default: ``{shard}`` in image_pattern is index // this.
SHARD_SIZE = 10_000
PATTERN_FIELDS = ("index", "shard")


@dataclass
class Cc3mConfig:
    root: str = option(help="tsv: the captions TSV file; webdataset: a folder of .tar shards, one .tar, or a glob")
    format: Literal["tsv", "webdataset"] = option("tsv", help="tsv (captions file + image folder) or webdataset (.tar shards)")
    image_dir: str = option("", help="tsv only: folder of downloaded images, named by data-row index")
    image_pattern: str = option(
        "{index:09d}.jpg",
        help="tsv only: image path under image_dir; fields {index} (data row from 0) and "
        "{shard} (index // 10000, img2dataset's sub-folders: '{shard:05d}/{index:09d}.jpg')",
    )
    caption_column: str = option("caption", help="tsv with a header row: the caption column's name")
    resolution: int = option(256, ge=8, help="images are resized (shorter side) and centre-cropped")
    limit: int = option(0, ge=0, help="use only the first N samples that have an image (0 = all)")

    def check(self) -> list[str]:
        problems = []
        if self.format == "tsv":
            if not self.image_dir:
                problems.append("image_dir: required when format is 'tsv' (the folder of downloaded images)")
            problems.extend(_pattern_problems(self.image_pattern))
        return problems

    def preflight(self) -> list[str]:
        if self.format == "webdataset":
            if not shard_paths(self.root):
                return [f"CC3M webdataset shards {self.root}: no .tar files found (set dataset.root=DIR or GLOB)"]
            return []
        problems = []
        if not Path(self.root).is_file():
            problems.append(f"CC3M TSV {self.root} not found (set dataset.root=FILE)")
        if not Path(self.image_dir).is_dir():
            problems.append(f"CC3M image folder {self.image_dir} not found (set dataset.image_dir=DIR)")
        return problems


def _pattern_problems(pattern: str) -> list[str]:
    try:
        fields = [f for _, f, _, _ in string.Formatter().parse(pattern) if f is not None]
        unknown = sorted({f for f in fields if f.split(".")[0].split("[")[0] not in PATTERN_FIELDS})
        if unknown:
            return [f"image_pattern: unknown field(s) {', '.join('{' + f + '}' for f in unknown)}; "
                    f"use {{index}} or {{shard}}, e.g. '{{index:09d}}.jpg'"]
        if "index" not in fields:
            return [f"image_pattern: {pattern!r} has no {{index}} field, so every row names the same image"]
        pattern.format(index=0, shard=0)
    except (ValueError, IndexError, KeyError) as exc:
        return [f"image_pattern: {pattern!r} is not a valid format string ({exc})"]
    return []


def shard_paths(spec: str) -> list[Path]:
    """The ``.tar`` shards named by ``spec`` (a folder, a file, or a glob), sorted."""
    path = Path(spec)
    if path.is_dir():
        return sorted(p for p in path.iterdir() if p.suffix == ".tar" and p.is_file())
    if path.is_file():
        return [path]
    return sorted(Path(p) for p in glob.glob(spec) if p.endswith(".tar") and os.path.isfile(p))


# -- tsv -----------------------------------------------------------------------------------------


def read_tsv_captions(path: Path, caption_column: str) -> Any:
    """Yield ``(index, caption)`` per data row; a first row with a ``caption_column`` field and
    no URL is a header, otherwise the caption is the first column (the official layout)."""
    with open(path, encoding="utf-8", newline="") as f:
        column, index = 0, 0
        for n, line in enumerate(f):
            line = line.rstrip("\r\n")
            if not line.strip():
                continue
            fields = line.split("\t")
            if n == 0:
                names = [x.strip().lower() for x in fields]
                if caption_column.lower() in names and not any("://" in x for x in fields):
                    column = names.index(caption_column.lower())
                    continue
            if column >= len(fields):
                raise DatasetError(f"{path}:{n + 1}: expected a {caption_column!r} column (#{column + 1}), "
                                 f"found {len(fields)} field(s)")
            yield index, fields[column].strip()
            index += 1


class Cc3mTsv:
    def __init__(self, config: Cc3mConfig) -> None:
        self.resolution = config.resolution
        self.image_dir = Path(config.image_dir)
        self.image_pattern = config.image_pattern
        existing = ExistingFiles()
        self.prompts: list[str] = []
        # TSV data-row index of each sample; paths are rebuilt on access (3M Path objects are ~1 GB)
        self.rows = array("q")
        seen = 0
        for index, caption in read_tsv_captions(Path(config.root), config.caption_column):
            seen += 1
            if self.file(index) not in existing:
                continue
            self.prompts.append(caption)
            self.rows.append(index)
            if config.limit and len(self.rows) >= config.limit:
                break
        self.skipped = seen - len(self.rows)
        self.rejected = {"missing_file": self.skipped} if self.skipped else {}
        self.rejected_examples: list[str] = []
        if not self.rows:
            raise DatasetError(f"CC3M: none of the {seen} rows of {config.root} has an image under "
                               f"{self.image_dir} (first expected {self.file(0)}); check dataset.image_dir and dataset.image_pattern")
        if self.skipped:
            log.warning("CC3M: skipped %d of %d rows of %s whose image is missing under %s",
                        self.skipped, seen, config.root, self.image_dir)
        log.info("CC3M: %d samples from %s", len(self.rows), config.root)

    def file(self, row: int) -> Path:
        """The image path of TSV data row ``row``."""
        return self.image_dir / self.image_pattern.format(index=row, shard=row // SHARD_SIZE)

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict[str, Any]:
        path = self.file(self.rows[index])
        try:
            image = decode_image(path, self.resolution, str(path))
        except FileNotFoundError:
            raise MissingImageError(f"CC3M image {path} (TSV row {self.rows[index]}) was removed "
                                    "after the dataset was indexed") from None
        return {"prompt": self.prompts[index], "image": image}


# -- webdataset ----------------------------------------------------------------------------------


def _split_key(name: str) -> tuple[str, str]:
    """WebDataset convention: the key is the member path up to the first dot of its basename."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (dot + ext).lower()


def _caption(ext: str, data: bytes, where: str) -> str | None:
    text = data.decode("utf-8", errors="replace")
    if ext == ".txt":
        return text.strip()
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        log.warning("CC3M: %s is not valid JSON; sample skipped", where)
        return None
    caption = value.get("caption") if isinstance(value, dict) else None
    return caption.strip() if isinstance(caption, str) else None


def index_shard(path: Path) -> tuple[list[tuple[str, int, int, str]], int]:
    """``([(key, image offset, image size, caption), ...], incomplete)`` in member order; samples
    lacking an image or a caption are counted as incomplete."""
    images: dict[str, tuple[str, int, int]] = {}
    captions: dict[str, tuple[str, str]] = {}  # key -> (ext, caption); .txt wins over .json
    order: list[str] = []
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _split_key(member.name)
                if key not in images and key not in captions:
                    order.append(key)
                if ext in IMAGE_EXTS:
                    images.setdefault(key, (member.name, member.offset_data, member.size))
                elif ext in (".txt", ".json") and captions.get(key, ("",))[0] != ".txt":
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    caption = _caption(ext, data, f"{path}:{member.name}")
                    if caption is not None:
                        captions[key] = (ext, caption)
    except tarfile.ReadError as exc:
        raise DatasetError(f"CC3M shard {path}: not an uncompressed tar archive ({exc})") from exc
    samples = [(images[k][0], images[k][1], images[k][2], captions[k][1])
               for k in order if k in images and k in captions]
    return samples, len(order) - len(samples)


class Cc3mWebDataset:
    def __init__(self, config: Cc3mConfig) -> None:
        self.resolution = config.resolution
        self.shards = shard_paths(config.root)
        if not self.shards:
            raise DatasetError(f"CC3M webdataset shards {config.root}: no .tar files found")
        # per sample: shard number, image member name (for messages), data offset and size;
        # flat arrays rather than tuples keep 3M samples small to hold and to pickle
        self.shard_of, self.offsets, self.sizes = array("l"), array("q"), array("q")
        self.names: list[str] = []
        self.prompts: list[str] = []
        incomplete = 0
        for s, shard in enumerate(self.shards):
            samples, bad = index_shard(shard)
            incomplete += bad
            for name, offset, size, caption in samples:
                self.shard_of.append(s)
                self.names.append(name)
                self.offsets.append(offset)
                self.sizes.append(size)
                self.prompts.append(caption)
            if config.limit and len(self.prompts) >= config.limit:
                n = config.limit
                del self.shard_of[n:], self.names[n:], self.offsets[n:], self.sizes[n:], self.prompts[n:]
                break
        self.skipped = incomplete
        self.rejected = {"incomplete_sample": incomplete} if incomplete else {}
        self.rejected_examples = []
        if incomplete:
            log.warning("CC3M: skipped %d incomplete samples (no image or no caption) in %s", incomplete, config.root)
        log.info("CC3M: %d samples from %d shard(s) in %s", len(self.prompts), len(self.shards), config.root)
        self._handles: dict[int, Any] = {}
        self._pid = os.getpid()

    def _handle(self, shard: int) -> Any:
        if self._pid != os.getpid():  # forked worker: its own handles, the parent closes its own
            self._handles, self._pid = {}, os.getpid()
        f = self._handles.get(shard)
        if f is None:
            f = self._handles[shard] = open(self.shards[shard], "rb")  # kept open: one per shard
        return f

    def read_bytes(self, index: int) -> bytes:
        shard, offset, size = self.shard_of[index], self.offsets[index], self.sizes[index]
        f = self._handle(shard)
        if hasattr(os, "pread"):  # no shared file position: safe across threads
            data = os.pread(f.fileno(), size, offset)
        else:
            f.seek(offset)
            data = f.read(size)
        if len(data) != size:
            raise DatasetError(f"CC3M shard {self.shards[shard]}: {self.names[index]} is truncated (shard changed after indexing?)")
        return data

    def close(self) -> None:
        for f in self._handles.values():
            f.close()
        self._handles = {}

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
        self._pid = os.getpid()

    def __len__(self) -> int:
        return len(self.prompts)

    def __getitem__(self, index: int) -> dict[str, Any]:
        where = f"{self.shards[self.shard_of[index]]}:{self.names[index]}"
        image = decode_image(self.read_bytes(index), self.resolution, where)
        return {"prompt": self.prompts[index], "image": image}


def build_cc3m(config: Cc3mConfig) -> Cc3mTsv | Cc3mWebDataset:
    return Cc3mWebDataset(config) if config.format == "webdataset" else Cc3mTsv(config)
