"""Physically pruned transformers that diffusers' own loader can save and load.

``PrunedPixArtTransformer2DModel``, ``PrunedSD3Transformer2DModel`` and ``PrunedFluxTransformer2DModel``
subclass the stock classes; their config is the dense config plus one ``pruning`` entry (unit mask,
depth layout, FFN groups, a readable per-layer summary). The constructor builds the dense architecture on
the ``meta`` device and narrows it as the mask says, so ``save_pretrained`` / ``from_pretrained`` work
with the conventional file names and every weight loads into a module of the right shape.

A stock class must not load such a folder (diffusers would re-initialise missing or mismatched weights
when asked to ignore mismatches, and a depth-pruned folder only lacks keys). The saved ``config.json``
therefore replaces one constructor argument by a marker string that the stock constructor rejects
(``MARKER_KEYS``); the pruned class restores the real value, kept in ``pruning``, when it reads the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.transformers.pixart_transformer_2d import PixArtTransformer2DModel
from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel
from torch import nn

from .. import pruned_config
from ..pruned_config import PrunedConfigMixin, expose_pruned_class
from ..unet.pruned_model import pruning_entry as _unet_pruning_entry
from .inventory import TransformerInventory, build_inventory
from .prune import apply_structure

PRUNING_FORMAT = "prunekit.pruned_transformer/1"
STOCK_MARKER = "PrunedByPrunekit: this transformer is pruned; load it with prunekit.Pruned{cls} (pip install prunekit)"
# The argument each stock constructor validates first with a message quoting it (PixArt: norm_type,
# SD3: qk_norm). Flux validates none of its arguments, so its marker is the text width, which fails
# when the first text projection is built.
MARKER_KEYS = {"PixArtTransformer2DModel": "norm_type", "SD3Transformer2DModel": "qk_norm",
               "FluxTransformer2DModel": "joint_attention_dim"}


def pruning_entry(inventory: TransformerInventory, mask: Any, *, round_to: int | None = None,
                  metadata: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The ``pruning`` config entry: the U-Net's (mask string, depth, ffn_groups, kept, dropped_blocks,
    metadata) under this format, plus the family."""
    entry = _unet_pruning_entry(inventory, mask, round_to=round_to, metadata=metadata)
    return {**entry, "format": PRUNING_FORMAT, "family": inventory.family}


def _materialize(model: nn.Module, device: torch.device) -> None:
    """Give the modules that pruning rebuilt on ``meta`` real parameters, initialised as the stock
    constructor would (their own ``reset_parameters``; the stand-ins' output biases at zero)."""
    for module in model.modules():
        on_meta = [name for name, p in module.named_parameters(recurse=False) if p.is_meta]
        if not on_meta:
            continue
        for name in on_meta:
            old = module._parameters[name]
            assert old is not None  # named_parameters only yields set parameters
            module._parameters[name] = nn.Parameter(torch.empty_like(old, device=device),
                                                    requires_grad=old.requires_grad)
        reset = getattr(module, "reset_parameters", None)
        if callable(reset):
            with warnings.catch_warnings():
                # A fully pruned Flux MLP is a zero-row linear on purpose.
                warnings.filterwarnings("ignore", "Initializing zero-element tensors is a no-op")
                reset()
        else:
            for name in on_meta:
                nn.init.zeros_(module._parameters[name])  # type: ignore[arg-type]


class PrunedTransformerMixin(PrunedConfigMixin):
    """The pruned behaviour shared by the three ``Pruned*`` classes (listed first in their bases)."""

    dense_class: ClassVar[type[ModelMixin]]
    pruning_format = PRUNING_FORMAT

    def __init__(self, *args: Any, pruning: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        pruning = self._require_pruning(pruning)
        target = torch.get_default_device()
        # On the default device, as the stock constructor: some buffers (PixArt's sin-cos position table)
        # are computed here and not saved, so a meta build could not fill them later.
        super().__init__(*args, **kwargs)
        self._narrow(pruning, _depth(pruning), build_inventory=build_inventory, pruning_entry=pruning_entry,
                     apply_structure=apply_structure)
        if target.type != "meta":
            with torch.no_grad():
                _materialize(self, target)

    @classmethod
    def marker_key(cls) -> str:
        return MARKER_KEYS[cls.dense_class.__name__]

    def stock_marker(self) -> str:
        return STOCK_MARKER.format(cls=type(self).__name__)

    @property
    def dense_config(self) -> dict[str, Any]:
        """The config of the model this one was pruned from (a stock config of ``dense_class``; the
        loader's private bookkeeping keys, such as the folder it was read from, left out)."""
        return {k: v for k, v in dict(self.config).items() if k != "pruning" and not k.startswith("_")}


def _depth(pruning: Mapping[str, Any]) -> list[str]:
    depth = pruning.get("depth")
    if not isinstance(depth, list):
        raise ValueError("pruning.depth must be the list of depth-gated block paths")
    return [str(p) for p in depth]


class PrunedPixArtTransformer2DModel(PrunedTransformerMixin, PixArtTransformer2DModel):
    """A ``PixArtTransformer2DModel`` with heads, FFN groups or whole blocks removed."""

    dense_class = PixArtTransformer2DModel


class PrunedSD3Transformer2DModel(PrunedTransformerMixin, SD3Transformer2DModel):
    """An ``SD3Transformer2DModel`` (SD3 / SD3.5) with joint heads, FFN groups or whole blocks removed."""

    dense_class = SD3Transformer2DModel


class PrunedFluxTransformer2DModel(PrunedTransformerMixin, FluxTransformer2DModel):
    """A ``FluxTransformer2DModel`` with heads, FFN / MLP groups or whole (double / single) blocks removed."""

    dense_class = FluxTransformer2DModel


PRUNED_CLASSES: dict[str, type[PrunedTransformerMixin]] = {
    cls.dense_class.__name__: cls
    for cls in (PrunedPixArtTransformer2DModel, PrunedSD3Transformer2DModel, PrunedFluxTransformer2DModel)
}


def _own_init(cls: type[PrunedTransformerMixin]) -> None:
    """Give ``cls`` an ``__init__`` of its own, so that it can carry the dense model's signature."""
    shared = PrunedTransformerMixin.__init__

    def __init__(self: PrunedTransformerMixin, *args: Any, **kwargs: Any) -> None:
        shared(self, *args, **kwargs)

    __init__.__qualname__ = f"{cls.__name__}.__init__"
    cls.__init__ = __init__  # type: ignore[method-assign]
    expose_pruned_class(cls, cls.dense_class)


for _cls in PRUNED_CLASSES.values():
    _own_init(_cls)


def pruned_class(dense: nn.Module) -> type[PrunedTransformerMixin]:
    """The pruned class for a stock dense transformer."""
    for cls in PRUNED_CLASSES.values():
        if isinstance(dense, cls.dense_class):
            return cls
    raise ValueError(f"no pruned class for {type(dense).__name__} (supported: {sorted(PRUNED_CLASSES)})")


def pruned_skeleton(cls: type[PrunedTransformerMixin], dense_config: Mapping[str, Any],
                    pruning: Mapping[str, Any]) -> PrunedTransformerMixin:
    """The pruned architecture on the meta device (no weights)."""
    return pruned_config.pruned_skeleton(cls, dense_config, pruning)
