"""Save and load a physically pruned U-Net (an "expert") as a folder.

Layout::

    folder/config.json        the base U-Net config (diffusers ``from_config`` format, with _class_name)
    folder/expert.json        format tag, unit mask, depth layout (explicit block paths), ffn_groups, round_to
    folder/model.safetensors  the pruned weights

Loading rebuilds the architecture from config + mask on the meta device, then loads the weights
strictly: every tensor must be present with the expected shape, and nothing extra. Only safetensors is
read; nothing is unpickled.
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
from .prune import apply_structure, hard_mask, meta_skeleton

FORMAT = "prunekit.unet.expert"
VERSION = 1
CONFIG_FILE, EXPERT_FILE, WEIGHTS_FILE = "config.json", "expert.json", "model.safetensors"


@dataclass(frozen=True)
class ExpertSpec:
    """What ``expert.json`` holds."""

    mask: tuple[bool, ...]
    depth: tuple[str, ...]
    ffn_groups: int = 32
    round_to: int | None = None
    class_name: str = "UNet2DConditionModel"
    metadata: dict[str, Any] = field(default_factory=dict)

    @property
    def num_units(self) -> int:
        return len(self.mask)


def _json_config(config: Any) -> dict[str, Any]:
    def plain(value: Any) -> Any:
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        return value

    return {k: plain(v) for k, v in dict(config).items()}


def build_expert_skeleton(config: Any, spec: ExpertSpec) -> nn.Module:
    """The pruned architecture described by ``config`` + ``spec``, on the meta device (no weights)."""
    model = meta_skeleton(config, spec.class_name)
    inventory = build_inventory(model, list(spec.depth), ffn_groups=spec.ffn_groups)
    if inventory.num_units != spec.num_units:
        raise ValueError(f"the mask has {spec.num_units} units but this config and depth layout give "
                         f"{inventory.num_units}")
    apply_structure(model, inventory, torch.tensor(spec.mask, dtype=torch.bool))
    return model


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


def save_expert(unet: nn.Module, mask: Any, folder: str | os.PathLike, *, base_config: Any | None = None,
                depth: DepthLayout = "aptp", ffn_groups: int = 32, round_to: int | None = None,
                metadata: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write a physically pruned U-Net to ``folder``.

    ``mask`` is the (adjusted, if ``round_to`` was used) unit mask the expert was pruned with;
    ``base_config`` defaults to ``unet.config`` (a pruned model keeps its base config). ``depth`` is the
    layout of the mask: "aptp", "all", None or a list of block paths; it is stored as explicit paths. The
    weights are checked against the architecture that config + mask rebuild before anything is written.
    Refuses a non-empty existing folder unless ``overwrite=True`` (then only the three expert files are
    replaced).
    """
    from safetensors.torch import save_file

    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} exists and is not empty; pass overwrite=True to replace the expert in it")
    config = _json_config(unet.config if base_config is None else base_config)
    class_name = config.pop("_class_name", type(unet).__name__)
    layout_model = meta_skeleton(config, class_name)
    inventory = build_inventory(layout_model, depth, ffn_groups=ffn_groups)
    keep, _ = hard_mask(mask, inventory.num_units)
    spec = ExpertSpec(tuple(bool(k) for k in keep), inventory.depth, ffn_groups, round_to, class_name,
                      dict(metadata or {}))
    skeleton = build_expert_skeleton(config, spec)
    state = {k: v.detach().to("cpu").contiguous() for k, v in unet.state_dict().items()}
    _check_state(skeleton.state_dict(), state, "the U-Net's weights")

    folder.mkdir(parents=True, exist_ok=True)
    expert = {"format": FORMAT, "version": VERSION, "class_name": class_name, "num_units": spec.num_units,
              "kept_units": int(keep.sum()), "mask": [int(k) for k in spec.mask], "depth": list(spec.depth),
              "ffn_groups": ffn_groups, "round_to": round_to, "metadata": spec.metadata}
    files = {
        CONFIG_FILE: json.dumps({"_class_name": class_name, **config}, indent=2, sort_keys=True).encode(),
        EXPERT_FILE: json.dumps(expert, indent=2).encode(),
    }
    # Write everything to temporary names first so a crash never leaves a half-written expert.
    # A write that fails (a full disk) removes the temporary files again.
    tmp_weights = folder / f".{WEIGHTS_FILE}.tmp"
    temps = {WEIGHTS_FILE: tmp_weights}
    try:
        save_file(state, str(tmp_weights), metadata={"format": FORMAT})
        for name, payload in files.items():
            fd, tmp_name = tempfile.mkstemp(dir=folder, prefix=f".{name}.")
            temps[name] = Path(tmp_name)
            with os.fdopen(fd, "wb") as handle:
                handle.write(payload)
    except BaseException:
        for tmp in temps.values():
            tmp.unlink(missing_ok=True)
        raise
    for name, tmp in temps.items():
        os.replace(tmp, folder / name)
    return folder


def read_expert_spec(folder: str | os.PathLike) -> tuple[dict[str, Any], ExpertSpec]:
    """(base config, spec) of a saved expert."""
    folder = Path(folder)
    for name in (CONFIG_FILE, EXPERT_FILE, WEIGHTS_FILE):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name} is missing; not a prunekit expert folder")
    config = json.loads((folder / CONFIG_FILE).read_text())
    raw = json.loads((folder / EXPERT_FILE).read_text())
    if raw.get("format") != FORMAT or raw.get("version") != VERSION:
        raise ValueError(f"{folder / EXPERT_FILE}: not a {FORMAT} v{VERSION} file")
    if len(raw["mask"]) != raw["num_units"]:
        raise ValueError(f"{folder / EXPERT_FILE}: mask has {len(raw['mask'])} entries, num_units says {raw['num_units']}")
    class_name = config.pop("_class_name", raw.get("class_name", "UNet2DConditionModel"))
    spec = ExpertSpec(tuple(bool(v) for v in raw["mask"]), tuple(raw["depth"]), int(raw["ffn_groups"]),
                      raw.get("round_to"), class_name, dict(raw.get("metadata") or {}))
    return config, spec


def load_expert(folder: str | os.PathLike, *, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = None) -> nn.Module:
    """Rebuild a saved expert: a stock ``UNet2DConditionModel`` with the pruned architecture, in eval mode."""
    from safetensors.torch import load_file

    folder = Path(folder)
    config, spec = read_expert_spec(folder)
    model = build_expert_skeleton(config, spec)
    state = load_file(str(folder / WEIGHTS_FILE), device=str(device))
    _check_state(model.state_dict(), state, f"the weights in {folder / WEIGHTS_FILE}")
    if dtype is not None:
        state = {k: v.to(dtype) for k, v in state.items()}
    model.load_state_dict(state, strict=True, assign=True)
    return model.eval()
