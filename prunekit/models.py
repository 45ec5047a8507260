"""Loading diffusers pipelines from a local folder or a hub id, with one clear error when offline."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from prunekit.errors import MissingPathError


def looks_like_path(ref: str) -> bool:
    """Hub ids are ``name`` or ``org/name``; anything else is meant as a folder."""
    return ref.startswith((".", "/", "~")) or ref.count("/") > 1 or ref.endswith("/")


def hub_offline() -> bool:
    return os.environ.get("HF_HUB_OFFLINE", "0") not in ("0", "", "false", "False")


def resolve_pretrained(ref: str, *, override: str, what: str = "model") -> tuple[str, bool]:
    """Return ``(ref, local_files_only)`` for ``from_pretrained``; raise when it cannot work.

    A local folder must exist; a hub id must already be in the local cache (this machine, like
    many clusters, has no route to the hub). ``override`` names the recipe key that sets it.
    """
    path = Path(ref).expanduser()
    if path.exists():
        if not path.is_dir():
            raise MissingPathError(f"{what} path {ref} is a file, expected a diffusers folder (set {override}=DIR)")
        return str(path), True
    if looks_like_path(ref):
        raise MissingPathError(f"{what} folder {ref} does not exist (set {override}=DIR)")
    try:
        from huggingface_hub import snapshot_download

        local = snapshot_download(ref, local_files_only=True)
    except Exception:
        raise MissingPathError(
            f"{what} {ref!r} is not a local folder and is not in the Hugging Face cache, and the hub is "
            f"unreachable offline: download it elsewhere and set {override}=/path/to/folder"
        ) from None
    return local, True


def _diffusers_reads_dtype() -> bool:
    """Newer diffusers renamed ``torch_dtype`` to ``dtype`` and warn on the old name; older ones
    ignore ``dtype``. The helper that resolves the two is there exactly when ``dtype`` is read."""
    try:
        from diffusers.utils.deprecation_utils import _resolve_dtype  # noqa: F401
    except ImportError:
        return False
    return True


def dtype_keyword() -> str:
    """The keyword diffusers' loaders read the dtype from (``dtype``, formerly ``torch_dtype``)."""
    return "dtype" if _diffusers_reads_dtype() else "torch_dtype"


def saved_without(folder: str | Path) -> dict[str, None]:
    """The required components a pipeline folder was saved without (``[null, null]`` in its
    ``model_index.json``, e.g. SD3's T5 ``text_encoder_3`` / ``tokenizer_3``), each as None: diffusers
    refuses to load such a folder unless they are passed."""
    import json

    import diffusers

    try:
        index = json.loads((Path(folder) / "model_index.json").read_text())
    except (OSError, ValueError):
        return {}
    pipeline_class = getattr(diffusers, str(index.get("_class_name")), None)
    optional = set(getattr(pipeline_class, "_optional_components", None) or [])
    return {name: None for name, value in index.items()
            if not name.startswith("_") and value == [None, None] and name not in optional}


def load_pipeline(ref: str, *, override: str = "model.path", dtype: str = "float32", **kwargs: Any) -> Any:
    """``DiffusionPipeline.from_pretrained`` of a local folder or a cached hub id (components it was
    saved without load as None)."""
    import torch
    from diffusers import DiffusionPipeline

    location, local_only = resolve_pretrained(ref, override=override)
    key = dtype_keyword()
    return DiffusionPipeline.from_pretrained(
        location, local_files_only=local_only, **{key: getattr(torch, dtype)}, **{**saved_without(location), **kwargs}
    )
