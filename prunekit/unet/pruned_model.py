"""``PrunedUNet2DConditionModel``: a physically pruned U-Net that diffusers' own loader can save and load.

It is a ``UNet2DConditionModel`` whose config is the dense model's config plus one ``pruning`` entry
(the unit mask, the depth layout, and a readable per-layer summary of kept widths, heads and dropped
blocks). Building it from that config gives the narrower architecture, so ``save_pretrained`` /
``from_pretrained`` work with the conventional file names (``config.json``,
``diffusion_pytorch_model.safetensors``), and a pipeline's ``model_index.json`` can name it as
``["prunekit", "PrunedUNet2DConditionModel"]``.

A stock ``UNet2DConditionModel.from_pretrained`` on such a folder must fail, not silently re-initialise
the pruned layers (which is what ``ignore_mismatched_sizes=True`` would do with the dense config). The
saved ``config.json`` therefore carries ``down_block_types`` as a one-entry marker naming this class; the
stock constructor rejects it before allocating anything ("Must provide the same number of
`down_block_types` as `up_block_types`... load it with prunekit.PrunedUNet2DConditionModel"), and this
class restores the real value, kept in ``pruning``, when it reads the file.
"""

from __future__ import annotations

import inspect
import json
from collections.abc import Mapping
from typing import Any

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel  # mypy: top-level names are dummies
from torch import nn

from .inventory import Inventory, build_inventory
from .prune import apply_structure, hard_mask

PRUNING_FORMAT = "prunekit.pruned_unet/1"
STOCK_MARKER = ("PrunedByPrunekit: this U-Net is pruned; load it with prunekit.PrunedUNet2DConditionModel "
                "(pip install prunekit)")


def pruning_entry(inventory: Inventory, mask: Any, *, round_to: int | None = None,
                  metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``pruning`` config entry for ``mask`` over ``inventory``: the mask (a 0/1 string, one character
    per unit), the depth layout, ``ffn_groups``, and what each changed layer keeps."""
    keep, _ = hard_mask(mask, inventory.num_units)
    dropped = [layer.path for layer in inventory.depth_layers if not bool(keep[layer.start])]
    dropped_units = {layer.start for layer in inventory.depth_layers if not bool(keep[layer.start])}
    widths: dict[str, dict[str, Any]] = {}
    for layer in inventory.width_layers:
        if layer.depth_unit in dropped_units:
            continue
        kept = int(keep[layer.start:layer.stop].sum())
        if kept != layer.count:
            what = {"resnet_group": "channels", "attn_head": "heads", "ffn_group": "ffn_channels"}[layer.kind]
            size = 1 if layer.kind == "attn_head" else layer.size
            widths[layer.path] = {what: [kept * size, layer.count * size]}
    return {
        "format": PRUNING_FORMAT,
        "mask": "".join("1" if k else "0" for k in keep.tolist()),
        "depth": list(inventory.depth),
        "ffn_groups": inventory.ffn_groups,
        "round_to": round_to,
        "kept": widths,
        "dropped_blocks": dropped,
        "metadata": dict(metadata or {}),
    }


def _mask_of(pruning: Mapping[str, Any]) -> torch.Tensor:
    bits = pruning.get("mask")
    if not isinstance(bits, str) or set(bits) - {"0", "1"}:
        raise ValueError("pruning.mask must be a string of 0/1 characters, one per unit")
    return torch.tensor([c == "1" for c in bits], dtype=torch.bool)


def _reset_parameters(model: nn.Module) -> None:
    # PyTorch's default initialisation, module by module: what the stock constructor would have done.
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset) and isinstance(module, (nn.Conv2d, nn.Linear, nn.GroupNorm, nn.LayerNorm)):
            reset()
        elif not isinstance(module, (nn.Conv2d, nn.Linear, nn.GroupNorm, nn.LayerNorm)):
            for param in module.parameters(recurse=False):  # the stand-ins' output biases
                nn.init.zeros_(param)


class PrunedUNet2DConditionModel(UNet2DConditionModel):
    """A ``UNet2DConditionModel`` with channels, heads, FFN groups or whole blocks removed.

    Takes every argument of ``UNet2DConditionModel`` (the dense architecture) plus ``pruning`` (see
    :func:`pruning_entry`). Built under ``torch.device("meta")`` it stays on the meta device (no
    initialisation cost; physical pruning fills it with sliced weights); otherwise its parameters get
    PyTorch's default initialisation on the default device.
    """

    def __init__(self, *args: Any, pruning: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        if pruning is None:
            raise ValueError("PrunedUNet2DConditionModel needs a `pruning` entry (written by prunekit)")
        if pruning.get("format") != PRUNING_FORMAT:
            raise ValueError(f"unsupported pruning format {pruning.get('format')!r} (expected {PRUNING_FORMAT})")
        target = torch.get_default_device()
        with torch.device("meta"):
            super().__init__(*args, **kwargs)
        # Index arithmetic on the CPU whatever the default device; the new modules are made on meta.
        with torch.device("cpu"):
            inventory = build_inventory(self, list(pruning["depth"]), ffn_groups=int(pruning["ffn_groups"]))
            keep = _mask_of(pruning)
            if keep.numel() != inventory.num_units:
                raise ValueError(f"pruning.mask has {keep.numel()} units but this architecture has "
                                 f"{inventory.num_units}")
            expected = pruning_entry(inventory, keep, round_to=pruning.get("round_to"))
            for key in ("kept", "dropped_blocks"):
                if key in pruning and pruning[key] != expected[key]:
                    raise ValueError(f"pruning.{key} does not match pruning.mask (edited by hand?)")
            apply_structure(self, inventory, keep)
        self.register_to_config(pruning=dict(pruning))
        if target.type != "meta":
            self.to_empty(device=target)
            with torch.no_grad():
                _reset_parameters(self)

    @classmethod
    def extract_init_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        pruning = config_dict.get("pruning")
        if isinstance(pruning, Mapping) and "down_block_types" in pruning:
            config_dict = dict(config_dict)
            restored = dict(pruning)
            config_dict["down_block_types"] = restored.pop("down_block_types")
            config_dict["pruning"] = restored
        return super().extract_init_dict(config_dict, **kwargs)

    def to_json_string(self) -> str:
        data = json.loads(super().to_json_string())
        pruning = dict(data.get("pruning") or {})
        pruning["down_block_types"] = data["down_block_types"]
        data["pruning"] = pruning
        data["down_block_types"] = [STOCK_MARKER]
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @property
    def pruning(self) -> dict[str, Any]:
        return dict(self.config["pruning"])

    @property
    def dense_config(self) -> dict[str, Any]:
        """The config of the U-Net this one was pruned from (a stock ``UNet2DConditionModel`` config)."""
        return {k: v for k, v in dict(self.config).items() if k != "pruning"}

    @property
    def keep_mask(self) -> torch.Tensor:
        return _mask_of(self.config["pruning"])


# diffusers reads the constructor's signature to know which config keys it takes: the dense model's
# parameters plus `pruning`.
_dense_params = [p for name, p in inspect.signature(UNet2DConditionModel.__init__).parameters.items()]
PrunedUNet2DConditionModel.__init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
    [*_dense_params, inspect.Parameter("pruning", inspect.Parameter.KEYWORD_ONLY, default=None)])


def pruned_skeleton(dense_config: Mapping[str, Any], pruning: Mapping[str, Any]) -> PrunedUNet2DConditionModel:
    """The pruned architecture on the meta device (no weights)."""
    config = {k: v for k, v in dict(dense_config).items() if k != "pruning"}
    with torch.device("meta"):
        model = PrunedUNet2DConditionModel.from_config({**config, "pruning": dict(pruning)})
    assert isinstance(model, PrunedUNet2DConditionModel)
    return model


# Saved pipelines name a component by (module, class); the stable public name keeps folders loadable
# when the implementation moves (`prunekit` resolves it lazily).
PrunedUNet2DConditionModel.__module__ = "prunekit"
