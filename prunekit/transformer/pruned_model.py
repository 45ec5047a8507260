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

import inspect
import json
import warnings
from collections.abc import Mapping
from typing import Any, ClassVar

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from diffusers.models.transformers.pixart_transformer_2d import PixArtTransformer2DModel
from diffusers.models.transformers.transformer_flux import FluxTransformer2DModel
from diffusers.models.transformers.transformer_sd3 import SD3Transformer2DModel
from torch import nn

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


def _mask_of(pruning: Mapping[str, Any]) -> torch.Tensor:
    bits = pruning.get("mask")
    if not isinstance(bits, str) or set(bits) - {"0", "1"}:
        raise ValueError("pruning.mask must be a string of 0/1 characters, one per unit")
    return torch.tensor([c == "1" for c in bits], dtype=torch.bool)


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


class PrunedTransformerMixin(ModelMixin, ConfigMixin):
    """The pruned behaviour shared by the three ``Pruned*`` classes (listed first in their bases)."""

    dense_class: ClassVar[type[ModelMixin]]
    # Both bases define it (ConfigMixin as None); ModelMixin's file name is what the stock classes use.
    config_name = ModelMixin.config_name  # type: ignore[assignment]

    def __init__(self, *args: Any, pruning: Mapping[str, Any] | None = None, **kwargs: Any) -> None:
        name = type(self).__name__
        if pruning is None:
            raise ValueError(f"{name} needs a `pruning` entry (written by prunekit)")
        if pruning.get("format") != PRUNING_FORMAT:
            raise ValueError(f"unsupported pruning format {pruning.get('format')!r} (expected {PRUNING_FORMAT})")
        target = torch.get_default_device()
        # On the default device, as the stock constructor: some buffers (PixArt's sin-cos position table)
        # are computed here and not saved, so a meta build could not fill them later.
        super().__init__(*args, **kwargs)
        with torch.device("cpu"):  # index arithmetic on the CPU whatever the default device
            inventory = build_inventory(self, _depth(pruning), ffn_groups=int(pruning["ffn_groups"]))
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
            with torch.no_grad():
                _materialize(self, target)

    @classmethod
    def marker_key(cls) -> str:
        return MARKER_KEYS[cls.dense_class.__name__]

    @classmethod
    def extract_init_dict(cls, config_dict: dict[str, Any], **kwargs: Any) -> Any:
        pruning = config_dict.get("pruning")
        key = cls.marker_key()
        if isinstance(pruning, Mapping) and key in pruning:
            config_dict = dict(config_dict)
            restored = dict(pruning)
            config_dict[key] = restored.pop(key)
            config_dict["pruning"] = restored
        return super().extract_init_dict(config_dict, **kwargs)

    def to_json_string(self) -> str:
        data = json.loads(super().to_json_string())
        key = self.marker_key()
        pruning = dict(data.get("pruning") or {})
        pruning[key] = data[key]
        data["pruning"] = pruning
        data[key] = STOCK_MARKER.format(cls=type(self).__name__)
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @property
    def pruning(self) -> dict[str, Any]:
        return dict(self.config["pruning"])

    @property
    def dense_config(self) -> dict[str, Any]:
        """The config of the model this one was pruned from (a stock config of ``dense_class``; the
        loader's private bookkeeping keys, such as the folder it was read from, left out)."""
        return {k: v for k, v in dict(self.config).items() if k != "pruning" and not k.startswith("_")}

    @property
    def keep_mask(self) -> torch.Tensor:
        return _mask_of(self.config["pruning"])


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
    """Give ``cls`` an ``__init__`` of its own whose signature is the dense model's plus ``pruning``:
    diffusers reads that signature to know which config keys the class takes."""
    shared = PrunedTransformerMixin.__init__

    def __init__(self: PrunedTransformerMixin, *args: Any, **kwargs: Any) -> None:
        shared(self, *args, **kwargs)

    params = list(inspect.signature(cls.dense_class.__init__).parameters.values())
    __init__.__signature__ = inspect.Signature(  # type: ignore[attr-defined]
        [*params, inspect.Parameter("pruning", inspect.Parameter.KEYWORD_ONLY, default=None)])
    __init__.__qualname__ = f"{cls.__name__}.__init__"
    cls.__init__ = __init__  # type: ignore[method-assign]
    # Saved pipelines name a component by (module, class); `prunekit` resolves these names lazily.
    cls.__module__ = "prunekit"


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
    config = {k: v for k, v in dict(dense_config).items() if k != "pruning"}
    with torch.device("meta"):
        model = cls.from_config({**config, "pruning": dict(pruning)})
    assert isinstance(model, PrunedTransformerMixin)
    return model
