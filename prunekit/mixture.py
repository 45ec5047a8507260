"""The mixture folder: what an APTP run deploys (router + prompt-encoder reference + experts).

Layout::

    mixture/
      manifest.json         format, model / prompt_encoder / router recipe sections, experts
      router.safetensors    the router's weights (predictor, codes)
      experts/expert_00/    prunekit.unet expert folders (safetensors + config + mask)
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FORMAT = "prunekit-mixture/1"
MANIFEST = "manifest.json"
ROUTER_FILE = "router.safetensors"


def expert_dir(folder: str | Path, index: int) -> Path:
    return Path(folder) / "experts" / f"expert_{index:02d}"


def write_manifest(folder: str | Path, *, model: dict[str, Any], prompt_encoder: dict[str, Any],
                   router: dict[str, Any], router_dims: dict[str, int], experts: list[dict[str, Any]],
                   extra: dict[str, Any] | None = None) -> Path:
    folder = Path(folder)
    for e in experts:
        if not (folder / e["path"]).is_dir():
            raise FileNotFoundError(f"expert folder {folder / e['path']} is missing")
    manifest = {
        "format": FORMAT,
        "model": model,
        "prompt_encoder": prompt_encoder,
        "router": router,
        "router_dims": router_dims,
        "experts": experts,
        **(extra or {}),
    }
    from prunekit.run import atomic_write_json

    atomic_write_json(folder / MANIFEST, manifest)
    return folder / MANIFEST


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a prunekit mixture (no {MANIFEST})")
    manifest = json.loads(path.read_text())
    if manifest.get("format") != FORMAT:
        raise ValueError(f"{path}: unsupported format {manifest.get('format')!r} (expected {FORMAT})")
    return manifest


def save_router(folder: str | Path, router: Any) -> None:
    from safetensors.torch import save_file

    save_file({k: v.detach().cpu().contiguous() for k, v in router.state_dict().items()}, str(Path(folder) / ROUTER_FILE))


def load_router_state(folder: str | Path) -> dict[str, Any]:
    from safetensors.torch import load_file

    return load_file(str(Path(folder) / ROUTER_FILE))
