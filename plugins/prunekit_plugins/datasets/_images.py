"""Shared pieces of the image-dataset plugins: decoding with errors that name the file, and a
cheap "does this image exist" test for datasets with millions of rows."""

from __future__ import annotations

import io
import os
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
