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

from collections.abc import Mapping
from typing import Any

import torch
from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel  # mypy: top-level names are dummies
from torch import nn

from .. import pruned_config
from ..pruned_config import PrunedConfigMixin, expose_pruned_class
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


def _reset_parameters(model: nn.Module) -> None:
    # PyTorch's default initialisation, module by module: what the stock constructor would have done.
    for module in model.modules():
        reset = getattr(module, "reset_parameters", None)
        if callable(reset) and isinstance(module, (nn.Conv2d, nn.Linear, nn.GroupNorm, nn.LayerNorm)):
            reset()
        elif not isinstance(module, (nn.Conv2d, nn.Linear, nn.GroupNorm, nn.LayerNorm)):
            for param in module.parameters(recurse=False):  # the stand-ins' output biases
                nn.init.zeros_(param)


class PrunedUNet2DConditionModel(PrunedConfigMixin, UNet2DConditionModel):
    """A ``UNet2DConditionModel`` with channels, heads, FFN groups or whole blocks removed.

    Takes every argument of ``UNet2DConditionModel`` (the dense architecture) plus ``pruning`` (see
    :func:`pruning_entry`). Built under ``torch.device("meta")`` it stays on the meta device (no
    initialisation cost; physical pruning fills it with sliced weights); otherwise its parameters get
    PyTorch's default initialisation on the default device.
    """

    pruning_format = PRUNING_FORMAT

    def __init__(self, *args: Any, pruning: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        pruning = self._require_pruning(pruning)
        target = torch.get_default_device()
        with torch.device("meta"):
            super().__init__(*args, **kwargs)
        self._narrow(pruning, list(pruning["depth"]), build_inventory=build_inventory,
                     pruning_entry=pruning_entry, apply_structure=apply_structure)
        if target.type != "meta":
            self.to_empty(device=target)
            with torch.no_grad():
                _reset_parameters(self)

    @classmethod
    def marker_key(cls) -> str:
        # The stock constructor checks it first, before allocating anything.
        return "down_block_types"

    def stock_marker(self) -> list[str]:
        return [STOCK_MARKER]

    @property
    def dense_config(self) -> dict[str, Any]:
        """The config of the U-Net this one was pruned from (a stock ``UNet2DConditionModel`` config)."""
        return {k: v for k, v in dict(self.config).items() if k != "pruning"}


expose_pruned_class(PrunedUNet2DConditionModel, UNet2DConditionModel)


def pruned_skeleton(dense_config: Mapping[str, Any], pruning: Mapping[str, Any]) -> PrunedUNet2DConditionModel:
    """The pruned architecture on the meta device (no weights)."""
    return pruned_config.pruned_skeleton(PrunedUNet2DConditionModel, dense_config, pruning)
