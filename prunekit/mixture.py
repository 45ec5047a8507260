"""The mixture folder: what a structured-pruning run deploys, as a diffusers pipeline folder.

Layout::

    mixture/
      model_index.json      PromptRoutedPipeline and its components (diffusers' format)
      vae/ text_encoder/ tokenizer/ scheduler/    the shared parts, written once (SDXL / SD3 / Flux
                            add text_encoder_2/ tokenizer_2/, SD3 with T5 text_encoder_3/ tokenizer_3/)
      router/               PromptRouter: router weights + the sections that rebuild it and the
                            prompt encoder's reference (recipe section + SHA-256 of its weights)
      experts/config.json   ExpertUNets: the expert subfolders, in routing order
      experts/expert_00/    one pruned denoiser folder per expert (PrunedUNet2DConditionModel or a
                            Pruned*Transformer2DModel; loadable alone)
      manifest.json         what prunekit adds: MACs, budget, routing shares, latent size, text length

``PromptRoutedPipeline.from_pretrained(mixture)`` loads it. Folders of the first format
(``manifest.json`` + ``router.safetensors`` + experts, the shared parts named by recipe section) still
load through :func:`load_first_format`.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

FORMAT = "prunekit-mixture/2"
FIRST_FORMAT = "prunekit-mixture/1"
MANIFEST = "manifest.json"
FIRST_ROUTER_FILE = "router.safetensors"


def expert_dir(folder: str | Path, index: int) -> Path:
    return Path(folder) / "experts" / f"expert_{index:02d}"


def write_manifest(folder: str | Path, *, experts: list[dict[str, Any]], extra: dict[str, Any] | None = None) -> Path:
    folder = Path(folder)
    for e in experts:
        if not (folder / e["path"]).is_dir():
            raise FileNotFoundError(f"expert folder {folder / e['path']} is missing")
    from prunekit.run import atomic_write_json

    atomic_write_json(folder / MANIFEST, {"format": FORMAT, "experts": experts, **(extra or {})})
    return folder / MANIFEST


def read_manifest(folder: str | Path) -> dict[str, Any]:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder} is not a prunekit mixture (no {MANIFEST})")
    manifest = json.loads(path.read_text())
    if manifest.get("format") not in (FORMAT, FIRST_FORMAT):
        raise ValueError(f"{path}: unsupported format {manifest.get('format')!r} (expected {FORMAT})")
    return manifest


def write_mixture(folder: str | Path, *, base: Any, router: Any, prompt_encoder: Any,
                  router_section: dict[str, Any], router_dims: dict[str, int],
                  prompt_encoder_section: dict[str, Any], experts: Sequence[dict[str, Any]],
                  extra: dict[str, Any] | None = None) -> Path:
    """Complete ``folder`` (whose ``experts/expert_NN/`` are already written) into a mixture pipeline
    folder: the shared parts of ``base`` (a diffusers pipeline), the router, ``experts/config.json``,
    ``model_index.json`` and the manifest. The experts' weights are not rewritten."""
    from prunekit.mixture_models import ExpertUNets, PromptRouter
    from prunekit.pipeline import EXTRA_TEXT_COMPONENTS, PromptRoutedPipeline, shared_parts

    folder = Path(folder)
    names = [Path(e["path"]).name for e in experts]
    for e in experts:
        if not (folder / e["path"]).is_dir():
            raise FileNotFoundError(f"expert folder {folder / e['path']} is missing")
    container = ExpertUNets(folders=names, info=[{k: v for k, v in e.items() if k != "path"} for e in experts])
    routed = PromptRouter.wrap(router, prompt_encoder, router_section=router_section, router_dims=router_dims,
                               prompt_encoder_section=prompt_encoder_section)
    parts = shared_parts(base)
    pipe = PromptRoutedPipeline(**parts, router=routed, experts=container)
    for name in ("vae", "text_encoder", "tokenizer", "scheduler", "safety_checker", "feature_extractor",
                 *EXTRA_TEXT_COMPONENTS):
        part = parts.get(name)
        if part is not None:
            part.save_pretrained(folder / name)
    routed.save_pretrained(folder / "router")
    container.save_config(folder / "experts")
    pipe.save_config(folder)  # model_index.json
    write_manifest(folder, experts=list(experts), extra=extra)
    return folder


def load_first_format(cls: Any, folder: Path, *, device: str = "cpu", dtype: Any = None, registry: Any = None,
                      base: Any = None, **_: Any) -> Any:
    """A ``prunekit-mixture/1`` folder: the shared parts are rebuilt from the recipe's ``model`` section
    (unless ``base`` is given), the router from its section and ``router.safetensors``."""
    from safetensors.torch import load_file

    from prunekit.conditioning import denoiser_of
    from prunekit.denoisers import load_expert
    from prunekit.registry import get_registry

    manifest = read_manifest(folder)
    if manifest.get("format") != FIRST_FORMAT:
        raise FileNotFoundError(f"{folder} has no model_index.json; not a mixture pipeline folder")
    registry = registry or get_registry()
    if base is None:
        base = registry.build("model", manifest["model"])
    encoder = registry.build("prompt_encoder", manifest["prompt_encoder"])
    router = registry.build("router", manifest["router"], **manifest["router_dims"])
    router.load_state_dict(load_file(str(folder / FIRST_ROUTER_FILE)))
    router.eval()
    if dtype is None:  # experts compute in the base's dtype, whatever dtype they were saved in
        dtype = denoiser_of(base).dtype
    experts = [load_expert(folder / entry["path"], device=device, dtype=dtype) for entry in manifest["experts"]]
    base = base.to(device)
    if dtype is not None:
        base = base.to(dtype=dtype)
    pipe = cls.from_parts(base, encoder, router, experts, manifest, router_section=manifest["router"],
                          router_dims=manifest["router_dims"], prompt_encoder_section=manifest["prompt_encoder"])
    return pipe
