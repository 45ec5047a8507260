"""Save and load a physically pruned U-Net (an "expert") as a diffusers model folder.

Layout (what ``PrunedUNet2DConditionModel.save_pretrained`` writes)::

    folder/config.json                          dense U-Net config + ``pruning`` (mask, depth layout,
                                                kept widths / heads, dropped blocks, metadata)
    folder/diffusion_pytorch_model.safetensors  the pruned weights

so ``PrunedUNet2DConditionModel.from_pretrained(folder)`` and any diffusers pipeline whose
``model_index.json`` names ``["prunekit", "PrunedUNet2DConditionModel"]`` load it. Loading here is
stricter than diffusers' (which only warns): every tensor must be present with the expected shape, and
nothing extra. Folders of the first format (``expert.json`` + ``model.safetensors``) still load.
Only safetensors is read; nothing is unpickled.
"""

from __future__ import annotations

import json
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .inventory import DepthLayout, build_inventory
from .prune import hard_mask, meta_skeleton
from .pruned_model import PRUNING_FORMAT, PrunedUNet2DConditionModel, pruned_skeleton, pruning_entry

CONFIG_FILE = "config.json"
WEIGHTS_FILE = "diffusion_pytorch_model.safetensors"
# The first on-disk format (read-only now).
LEGACY_FORMAT, LEGACY_EXPERT_FILE, LEGACY_WEIGHTS_FILE = "prunekit.unet.expert", "expert.json", "model.safetensors"


@dataclass(frozen=True)
class ExpertSpec:
    """How an expert was cut from its dense U-Net."""

    mask: tuple[bool, ...]
    depth: tuple[str, ...]
    ffn_groups: int = 32
    round_to: int | None = None
    class_name: str = "UNet2DConditionModel"  # the dense model's class
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_units(self) -> int:
        return len(self.mask)

    def pruning(self) -> dict[str, Any]:
        """The ``pruning`` config entry (see :func:`prunekit.unet.pruned_model.pruning_entry`), without the
        readable summary, which the model recomputes."""
        return {"format": PRUNING_FORMAT, "mask": "".join("1" if m else "0" for m in self.mask),
                "depth": list(self.depth), "ffn_groups": self.ffn_groups, "round_to": self.round_to,
                "metadata": dict(self.metadata)}


def _plain(value: Any) -> Any:
    if isinstance(value, (list, tuple)):
        return [_plain(v) for v in value]
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    return value


def _dense_config(config: Any) -> dict[str, Any]:
    return {k: _plain(v) for k, v in dict(config).items() if not k.startswith("_") and k != "pruning"}


def build_expert_skeleton(config: Any, spec: ExpertSpec) -> PrunedUNet2DConditionModel:
    """The pruned architecture described by ``config`` (dense) + ``spec``, on the meta device (no weights)."""
    if spec.class_name != "UNet2DConditionModel":
        raise ValueError(f"experts of {spec.class_name} are not supported (UNet2DConditionModel only)")
    return pruned_skeleton(_dense_config(config), spec.pruning())


def _check_state(expected: dict[str, torch.Tensor], found: dict[str, torch.Tensor], what: str) -> None:
    missing = sorted(set(expected) - set(found))
    unexpected = sorted(set(found) - set(expected))
    mismatched = sorted(f"{k}: expected {tuple(expected[k].shape)}, got {tuple(found[k].shape)}"
                        for k in set(expected) & set(found) if expected[k].shape != found[k].shape)
    if missing or unexpected or mismatched:
        lines = [f"{what} do not match the expert architecture:"]
        for label, items in (("missing", missing), ("unexpected", unexpected), ("wrong shape", mismatched)):
            if items:
                lines.append(f"  {label} ({len(items)}): " + ", ".join(items[:8]) + (" ..." if len(items) > 8 else ""))
        raise ValueError("\n".join(lines))


def as_pruned_model(unet: nn.Module, mask: Any = None, *, base_config: Any | None = None,
                    depth: DepthLayout = "aptp", ffn_groups: int = 32, round_to: int | None = None,
                    metadata: dict[str, Any] | None = None) -> PrunedUNet2DConditionModel:
    """``unet`` as a :class:`PrunedUNet2DConditionModel` sharing its weights.

    ``unet`` is either already one (``mask``, if given, must be its mask) or a stock U-Net whose modules
    were pruned while its config still describes the dense model (``base_config`` defaults to its config;
    ``mask``, ``depth``, ``ffn_groups`` say how it was cut). The weights are checked against the
    architecture that config + mask rebuild.
    """
    state = {k: v.detach() for k, v in unet.state_dict().items()}
    if isinstance(unet, PrunedUNet2DConditionModel) and base_config is None:
        pruning = unet.pruning
        if mask is not None:
            keep, _ = hard_mask(mask, len(pruning["mask"]))
            if "".join("1" if k else "0" for k in keep.tolist()) != pruning["mask"]:
                raise ValueError("the mask given does not match the mask this pruned U-Net was built with")
        if round_to is not None:
            pruning["round_to"] = round_to
        pruning["metadata"] = {**pruning.get("metadata", {}), **(metadata or {})}
        config = _dense_config(unet.config)
    else:
        if mask is None:
            raise ValueError("a stock U-Net needs the mask it was pruned with")
        config = _dense_config(unet.config if base_config is None else base_config)
        inventory = build_inventory(meta_skeleton(config), depth, ffn_groups=ffn_groups)
        pruning = pruning_entry(inventory, mask, round_to=round_to, metadata=metadata)
    model = pruned_skeleton(config, pruning)
    _check_state(model.state_dict(), state, "the U-Net's weights")
    model.load_state_dict(state, strict=True, assign=True)
    return model.train(unet.training)


def save_expert(unet: nn.Module, mask: Any, folder: str | os.PathLike, *, base_config: Any | None = None,
                depth: DepthLayout = "aptp", ffn_groups: int = 32, round_to: int | None = None,
                metadata: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write a physically pruned U-Net to ``folder`` in diffusers format (see the module docstring).

    ``unet``/``mask``/``base_config``/``depth``/``ffn_groups``: see :func:`as_pruned_model`. Refuses a
    non-empty existing folder unless ``overwrite=True`` (then only the expert's files are replaced). The
    files are written under temporary names and renamed, so a crash or a full disk never leaves a
    half-written expert.
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} exists and is not empty; pass overwrite=True to replace the expert in it")
    model = as_pruned_model(unet, mask, base_config=base_config, depth=depth, ffn_groups=ffn_groups,
                            round_to=round_to, metadata=metadata)
    state = {k: v.detach().to("cpu").contiguous() for k, v in model.state_dict().items()}
    folder.mkdir(parents=True, exist_ok=True)
    temps: dict[str, Path] = {}
    try:
        for name in (WEIGHTS_FILE, CONFIG_FILE):
            fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
            os.close(fd)
            temps[name] = Path(tmp_name)
        save_file(state, str(temps[WEIGHTS_FILE]), metadata={"format": "pt"})
        temps[CONFIG_FILE].write_text(model.to_json_string())
    except BaseException:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        raise
    for name, tmp in temps.items():
        os.replace(tmp, folder / name)
    return folder


def _read_legacy(folder: Path) -> tuple[dict[str, Any], ExpertSpec]:
    config = json.loads((folder / CONFIG_FILE).read_text())
    raw = json.loads((folder / LEGACY_EXPERT_FILE).read_text())
    if raw.get("format") != LEGACY_FORMAT or raw.get("version") != 1:
        raise ValueError(f"{folder / LEGACY_EXPERT_FILE}: not a {LEGACY_FORMAT} v1 file")
    if len(raw["mask"]) != raw["num_units"]:
        raise ValueError(f"{folder / LEGACY_EXPERT_FILE}: mask has {len(raw['mask'])} entries, "
                         f"num_units says {raw['num_units']}")
    class_name = config.pop("_class_name", raw.get("class_name", "UNet2DConditionModel"))
    spec = ExpertSpec(tuple(bool(v) for v in raw["mask"]), tuple(raw["depth"]), int(raw["ffn_groups"]),
                      raw.get("round_to"), class_name, dict(raw.get("metadata") or {}))
    return config, spec


def _weights_file(folder: Path) -> Path:
    return folder / (LEGACY_WEIGHTS_FILE if (folder / LEGACY_EXPERT_FILE).is_file() else WEIGHTS_FILE)


def _read(folder: Path) -> tuple[dict[str, Any], ExpertSpec, dict[str, Any]]:
    if not (folder / CONFIG_FILE).is_file():
        raise FileNotFoundError(f"{folder / CONFIG_FILE} is missing; not a prunekit expert folder")
    if not _weights_file(folder).is_file():
        raise FileNotFoundError(f"{_weights_file(folder)} is missing; not a prunekit expert folder")
    if (folder / LEGACY_EXPERT_FILE).is_file():
        config, spec = _read_legacy(folder)
        return config, spec, spec.pruning()
    config = json.loads((folder / CONFIG_FILE).read_text())
    if config.get("_class_name") != PrunedUNet2DConditionModel.__name__:
        raise ValueError(f"{folder / CONFIG_FILE} describes a {config.get('_class_name')}, not a pruned U-Net "
                         "(PrunedUNet2DConditionModel)")
    config = PrunedUNet2DConditionModel.extract_init_dict(config)[0]  # undoes the stock-loader guard
    pruning = config.pop("pruning")
    if pruning.get("format") != PRUNING_FORMAT:
        raise ValueError(f"{folder / CONFIG_FILE}: unsupported pruning format {pruning.get('format')!r}")
    spec = ExpertSpec(tuple(c == "1" for c in pruning["mask"]), tuple(pruning["depth"]), int(pruning["ffn_groups"]),
                      pruning.get("round_to"), "UNet2DConditionModel", dict(pruning.get("metadata") or {}))
    return config, spec, pruning


def read_expert_spec(folder: str | os.PathLike) -> tuple[dict[str, Any], ExpertSpec]:
    """(dense config, spec) of a saved expert."""
    config, spec, _ = _read(Path(folder))
    return config, spec


def load_expert(folder: str | os.PathLike, *, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = None) -> PrunedUNet2DConditionModel:
    """Rebuild a saved expert as a :class:`PrunedUNet2DConditionModel`, in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config, _, pruning = _read(folder)
    model = pruned_skeleton(config, pruning)
    weights = _weights_file(folder)
    state = load_file(str(weights), device=str(device))
    _check_state(model.state_dict(), state, f"the weights in {weights}")
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
