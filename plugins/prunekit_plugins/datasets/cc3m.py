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
from prunekit_plugins.datasets._images import (
    DatasetError,
    ExistingFiles,
    MissingImageError,
    Rejects,
    decode_image,
)

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

    def probe_samples(self) -> list[str]:
        """``[]`` once a sample reads: TSV rows are read and images opened until the first readable
        one (a few tens at most); for webdataset the first shards are indexed (at most four)."""
        from itertools import islice

        from prunekit_plugins.datasets._images import probe

        rejects = Rejects()
        if self.format == "webdataset":
            def shard_samples() -> Any:
                for shard in islice(shard_paths(self.root), 4):
                    try:
                        samples, incomplete = index_shard(shard, rejects)
                    except DatasetError as exc:
                        rejects.add("unreadable_shard", str(exc))
                        continue
                    rejects.counts["incomplete_sample"] += incomplete
                    with open(shard, "rb") as f:
                        for name, offset, size, caption in samples:
                            f.seek(offset)
                            yield f"{shard}:{name}", caption, f.read(size)

            return probe(shard_samples(), f"CC3M webdataset shards {self.root}", rejects=rejects)
        pattern = self.image_pattern
        tsv_rows = read_tsv_captions(Path(self.root), self.caption_column, rejects)
        samples = ((f"{Path(self.image_dir) / pattern.format(index=i, shard=i // SHARD_SIZE)} (TSV row {i})", caption,
                    Path(self.image_dir) / pattern.format(index=i, shard=i // SHARD_SIZE)) for i, caption in tsv_rows)
        return probe(samples, f"CC3M TSV {self.root} with images in {self.image_dir}", rejects=rejects)

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


def read_tsv_captions(path: Path, caption_column: str, rejects: Rejects | None = None) -> Any:
    """Yield ``(index, caption)`` per data row; a first row with a ``caption_column`` field and
    no URL is a header, otherwise the caption is the first column (the official layout). With
    ``rejects``, a row that is not UTF-8 or lacks the caption column is skipped and counted there as
    ``bad_metadata`` (it keeps its index: images are named by data-row index)."""
    with open(path, "rb") as f:
        column, index = 0, 0
        for n, raw in enumerate(f):
            try:
                line = raw.decode("utf-8").rstrip("\r\n")
            except UnicodeDecodeError as exc:
                if rejects is None:
                    raise DatasetError(f"{path}:{n + 1}: not UTF-8 ({exc.reason})") from None
                if raw.strip():
                    rejects.add("bad_metadata", f"{path}:{n + 1}: not UTF-8 ({exc.reason})")
                    index += 1
                continue
            if not line.strip():
                continue
            fields = line.split("\t")
            if n == 0:
                names = [x.strip().lower() for x in fields]
                if caption_column.lower() in names and not any("://" in x for x in fields):
                    column = names.index(caption_column.lower())
                    continue
            if column >= len(fields):
                problem = (f"{path}:{n + 1}: expected a {caption_column!r} column (#{column + 1}), "
                           f"found {len(fields)} field(s)")
                if rejects is None:
                    raise DatasetError(problem)
                rejects.add("bad_metadata", problem)
                index += 1
                continue
            yield index, fields[column].strip()
            index += 1


class Cc3mTsv:
    def __init__(self, config: Cc3mConfig) -> None:
        self.resolution = config.resolution
        self.image_dir = Path(config.image_dir)
        self.image_pattern = config.image_pattern
        self.root = Path(config.root)
        existing = ExistingFiles()
        rejects = Rejects()
        self.prompts: list[str] = []
        # TSV data-row index of each sample; paths are rebuilt on access (3M Path objects are ~1 GB)
        self.rows = array("q")
        seen = 0
        for index, caption in read_tsv_captions(self.root, config.caption_column, rejects):
            seen += 1
            path = self.file(index)
            if path not in existing:
                rejects.add("missing_file", f"{path} (TSV row {index}) not downloaded")
                continue
            self.prompts.append(caption)
            self.rows.append(index)
            if config.limit and len(self.rows) >= config.limit:
                break
        missing = rejects.counts["missing_file"]
        self.skipped = len(rejects)
        self.rejected, self.rejected_examples = dict(rejects.counts), rejects.examples
        if not self.rows:
            if not seen:
                raise DatasetError(f"CC3M: {config.root} holds no readable row ({', '.join(rejects.examples[:1]) or 'empty'})")
            raise DatasetError(f"CC3M: none of the {seen} rows of {config.root} has an image under "
                               f"{self.image_dir} (first expected {self.file(0)}); check dataset.image_dir and dataset.image_pattern")
        if missing:
            log.warning("CC3M: skipped %d of %d rows of %s whose image is missing under %s",
                        missing, seen, config.root, self.image_dir)
        if rejects.counts["bad_metadata"]:
            log.warning("CC3M: skipped %d unreadable rows of %s", rejects.counts["bad_metadata"], config.root)
        log.info("CC3M: %d samples from %s", len(self.rows), config.root)

    def file(self, row: int) -> Path:
        """The image path of TSV data row ``row``."""
        return self.image_dir / self.image_pattern.format(index=row, shard=row // SHARD_SIZE)

    def __len__(self) -> int:
        return len(self.rows)

    def where(self, index: int) -> str:
        return f"{self.file(self.rows[index])} (TSV row {self.rows[index]} of {self.root})"

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


def _caption(ext: str, data: bytes) -> tuple[str | None, str]:
    """``(caption, "")`` from a ``.txt`` or ``.json`` member, or ``(None, why not)``."""
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as exc:
        return None, f"not UTF-8 ({exc.reason})"
    if ext == ".txt":
        return text.strip(), ""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return None, f"not valid JSON ({exc.msg})"
    caption = value.get("caption") if isinstance(value, dict) else None
    return (caption.strip(), "") if isinstance(caption, str) else (None, "no 'caption' string")


def index_shard(path: Path, rejects: Rejects | None = None) -> tuple[list[tuple[str, int, int, str]], int]:
    """``([(key, image offset, image size, caption), ...], incomplete)`` in member order; samples
    lacking an image or a caption are counted as incomplete, or, given ``rejects``, samples whose
    only caption member cannot be read (not UTF-8, not JSON, no caption) as ``bad_metadata`` there."""
    images: dict[str, tuple[str, int, int]] = {}
    captions: dict[str, tuple[str, str]] = {}  # key -> (ext, caption); .txt wins over .json
    unreadable: dict[str, str] = {}  # key -> why its caption member could not be read
    order: list[str] = []
    try:
        with tarfile.open(path, mode="r:") as tar:
            for member in tar:
                if not member.isfile():
                    continue
                key, ext = _split_key(member.name)
                if key not in images and key not in captions and key not in unreadable:
                    order.append(key)
                if ext in IMAGE_EXTS:
                    images.setdefault(key, (member.name, member.offset_data, member.size))
                elif ext in (".txt", ".json") and captions.get(key, ("",))[0] != ".txt":
                    data = tar.extractfile(member).read()  # type: ignore[union-attr]
                    caption, problem = _caption(ext, data)
                    if caption is not None:
                        captions[key] = (ext, caption)
                    else:
                        unreadable.setdefault(key, f"{path}:{member.name}: {problem}")
    except tarfile.ReadError as exc:
        raise DatasetError(f"CC3M shard {path}: not an uncompressed tar archive ({exc})") from exc
    samples = [(images[k][0], images[k][1], images[k][2], captions[k][1])
               for k in order if k in images and k in captions]
    incomplete = len(order) - len(samples)
    if rejects is not None:
        for k in order:
            if k in unreadable and k not in captions:
                rejects.add("bad_metadata", unreadable[k])
                incomplete -= 1
    return samples, incomplete


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
        rejects = Rejects()
        for s, shard in enumerate(self.shards):
            samples, bad = index_shard(shard, rejects)
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
        self.skipped = incomplete + len(rejects)
        self.rejected = {"incomplete_sample": incomplete, **rejects.counts} if incomplete else dict(rejects.counts)
        self.rejected_examples = rejects.examples
        if incomplete:
            log.warning("CC3M: skipped %d incomplete samples (no image or no caption) in %s", incomplete, config.root)
        if rejects:
            log.warning("CC3M: skipped %d samples whose caption cannot be read in %s; first: %s", len(rejects),
                        config.root, rejects.examples[0])
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

    def where(self, index: int) -> str:
        return f"{self.shards[self.shard_of[index]]}:{self.names[index]}"

    def __getitem__(self, index: int) -> dict[str, Any]:
        where = self.where(index)
        image = decode_image(self.read_bytes(index), self.resolution, where)
        return {"prompt": self.prompts[index], "image": image}


def build_cc3m(config: Cc3mConfig) -> Cc3mTsv | Cc3mWebDataset:
    return Cc3mWebDataset(config) if config.format == "webdataset" else Cc3mTsv(config)
