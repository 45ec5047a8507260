"""Shared pieces of the image-dataset plugins: decoding with errors that name the file, and a
cheap "does this image exist" test for datasets with millions of rows."""

from __future__ import annotations

import io
import os
from collections import Counter
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from prunekit.errors import MissingPathError, PrunekitError
from prunekit_plugins.datasets.imagefolder import load_image


class MissingImageError(MissingPathError, FileNotFoundError):
    """An image that the dataset lists is not on disk (also a ``FileNotFoundError``)."""


class DatasetError(PrunekitError, ValueError):
    """A dataset file is malformed, or a dataset turns out empty; the message names the file."""


class ImageDecodeError(DatasetError):
    """An image exists but cannot be decoded (truncated download, HTML error page, ...)."""


def decode_image(source: Path | bytes, resolution: int, name: str) -> Any:
    """Float tensor (3, R, R) in [-1, 1] from a path or encoded bytes; ``name`` (a path, or
    ``shard.tar:member``) is what an error message points at."""
    try:
        return load_image(io.BytesIO(source) if isinstance(source, bytes) else source, resolution)
    except FileNotFoundError:
        raise
    except Exception as exc:  # PIL raises UnidentifiedImageError, OSError, SyntaxError, ...
        raise ImageDecodeError(f"cannot decode image {name}: {' '.join(str(exc).split())}") from exc


class ExistingFiles:
    """``path in files`` for many paths under a few folders: each folder is listed once (one
    directory read instead of one ``stat`` per row, which matters for millions of rows on a
    network file system)."""

    def __init__(self) -> None:
        self._listed: dict[str, frozenset[str]] = {}

    def __contains__(self, path: Path) -> bool:
        folder = str(path.parent)
        names = self._listed.get(folder)
        if names is None:
            try:
                with os.scandir(folder) as it:
                    names = frozenset(e.name for e in it if not e.is_dir())
            except (FileNotFoundError, NotADirectoryError):
                names = frozenset()
            self._listed[folder] = names
        return path.name in names


class Rejects:
    """Rows a dataset drops while indexing (``bad_metadata``, ``missing_file``, ...): counted by
    reason, the first few named (file and line), however many there are."""

    def __init__(self, keep: int = 5) -> None:
        self.counts: Counter[str] = Counter()
        self.examples: list[str] = []
        self.keep = keep

    def add(self, reason: str, detail: str) -> None:
        self.counts[reason] += 1
        if len(self.examples) < self.keep:
            self.examples.append(detail)

    def __len__(self) -> int:
        return sum(self.counts.values())


# -- validation: is there a readable sample at all? (PIL only: ``prunekit validate`` never imports torch)

PROBE_LIMIT = 32  # samples tried before a dataset is reported as holding no readable one


def image_problem(source: Path | bytes | None) -> tuple[str, str] | None:
    """``None`` when ``source`` (a path, encoded bytes, or None for "not there") decodes as an
    image; otherwise ``(reason, detail)`` with reason ``missing_file`` or ``unreadable_image``."""
    from PIL import Image

    if source is None:
        return "missing_file", "not found"
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as im:
            im.load()  # decode every pixel: a truncated file fails here, not at open
    except FileNotFoundError:
        return "missing_file", "not found"
    except Exception as exc:  # UnidentifiedImageError, OSError (truncated), SyntaxError, ...
        return "unreadable_image", f"{type(exc).__name__}: {' '.join(str(exc).split())}"
    return None


def probe(samples: Iterable[tuple[str, str | None, Any]], what: str, *, limit: int = PROBE_LIMIT,
          rejects: Rejects | None = None) -> list[str]:
    """``[]`` as soon as one of ``samples`` — ``(where, caption, image)``: caption None when the
    sample's metadata could not be read (``where`` then says why), image a path, bytes or None —
    has a caption and a readable image; otherwise one line saying what the first ``limit`` (or all)
    samples were. ``rejects``: what the reader dropped before yielding, counted with the rest."""
    counts: Counter[str] = Counter()
    first = None
    tried = 0
    for where, caption, image in samples:
        if tried >= limit:
            break
        tried += 1
        if caption is None:
            counts["bad_metadata"] += 1
            first = first or where
            continue
        problem: tuple[str, str] | None
        if not caption.strip():
            problem = ("empty_caption", "empty caption")
        else:
            problem = image_problem(image)
            if problem is None:
                return []
        counts[problem[0]] += 1
        first = first or f"{where}: {problem[1]}"
    if rejects is not None:  # read after the samples: a lazy reader fills it as it goes
        counts.update(rejects.counts)
        first = first or (rejects.examples[0] if rejects.examples else None)
    counts = +counts  # drop zero counts
    reasons = ", ".join(f"{k} {v}" for k, v in sorted(counts.items()))
    if not counts:
        return [f"{what} holds no sample"]
    if tried >= limit:
        return [f"{what}: none of the first {tried} samples is readable ({reasons}); first: {first}"]
    return [f"{what} holds no readable sample ({reasons}); first: {first}"]
