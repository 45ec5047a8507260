"""The config plumbing of a physically pruned diffusers model, shared by every family.

A pruned model's config is the dense model's config plus one ``pruning`` entry (the unit mask as a 0/1
string, the depth layout, ``ffn_groups``, a readable summary). Its constructor builds the dense
architecture and narrows it as the mask says, so ``save_pretrained`` / ``from_pretrained`` work with the
conventional file names and every weight loads into a module of the right shape.

A stock class must not load such a folder: it would re-initialise mismatched weights when asked to
ignore mismatches, and a depth-pruned folder only lacks keys. The saved ``config.json`` therefore
replaces one dense constructor argument (the family's :meth:`PrunedConfigMixin.marker_key`) by a marker
that the stock constructor rejects; the pruned class restores the real value, kept in ``pruning``, when it
reads the file.
"""

from __future__ import annotations

import abc
import inspect
import json
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any, ClassVar, TypeVar

import torch
from diffusers.configuration_utils import ConfigMixin
from diffusers.models.modeling_utils import ModelMixin
from torch import nn

if TYPE_CHECKING:
    from .unet.inventory import Inventory

_P = TypeVar("_P", bound="PrunedConfigMixin")


def mask_of(pruning: Mapping[str, Any]) -> torch.Tensor:
    """The keep mask (bool, one per unit) a ``pruning`` entry stores as a 0/1 string."""
    bits = pruning.get("mask")
    if not isinstance(bits, str) or set(bits) - {"0", "1"}:
        raise ValueError("pruning.mask must be a string of 0/1 characters, one per unit")
    return torch.tensor([c == "1" for c in bits], dtype=torch.bool)


class PrunedConfigMixin(ModelMixin, ConfigMixin, abc.ABC):
    """A pruned model's ``pruning`` config entry: checked and applied when built, and saved so that only
    the pruned class loads it. Listed before the diffusers model class in a pruned class's bases (whose
    own bases are ModelMixin, then ConfigMixin, in that order)."""

    pruning_format: ClassVar[str]
    # Both bases define it (ConfigMixin as None); ModelMixin's file name is what the stock classes use.
    config_name = ModelMixin.config_name  # type: ignore[assignment]

    @classmethod
    @abc.abstractmethod
    def marker_key(cls) -> str:
        """The dense constructor argument whose saved value is replaced by :meth:`stock_marker`."""

    @abc.abstractmethod
    def stock_marker(self) -> Any:
        """What ``config.json`` holds under :meth:`marker_key`: a value the stock constructor rejects
        with a message that names the pruned class."""

    @classmethod
    def _require_pruning(cls, pruning: Mapping[str, Any] | None) -> Mapping[str, Any]:
        if pruning is None:
            raise ValueError(f"{cls.__name__} needs a `pruning` entry (written by prunekit)")
        if pruning.get("format") != cls.pruning_format:
            raise ValueError(f"unsupported pruning format {pruning.get('format')!r} "
                             f"(expected {cls.pruning_format})")
        return pruning

    def _narrow(self, pruning: Mapping[str, Any], depth: Any, *, build_inventory: Callable[..., Inventory],
                pruning_entry: Callable[..., dict[str, Any]],
                apply_structure: Callable[[nn.Module, Any, torch.Tensor], object]) -> None:
        """Check ``pruning`` against this architecture (built dense), narrow it as the mask says and
        record ``pruning`` in the config. The three functions are the family's."""
        # Index arithmetic on the CPU whatever the default device; the narrowed modules are made on meta.
        with torch.device("cpu"):
            inventory = build_inventory(self, depth, ffn_groups=int(pruning["ffn_groups"]))
            keep = mask_of(pruning)
            if keep.numel() != inventory.num_units:
                raise ValueError(f"pruning.mask has {keep.numel()} units but this architecture has "
                                 f"{inventory.num_units}")
            # The summaries are recomputed, not trusted: a hand-edited one would describe another model.
            expected = pruning_entry(inventory, keep, round_to=pruning.get("round_to"))
            for key in ("kept", "dropped_blocks"):
                if key in pruning and pruning[key] != expected[key]:
                    raise ValueError(f"pruning.{key} does not match pruning.mask (edited by hand?)")
            apply_structure(self, inventory, keep)
        self.register_to_config(pruning=dict(pruning))

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
        data[key] = self.stock_marker()
        return json.dumps(data, indent=2, sort_keys=True) + "\n"

    @property
    def pruning(self) -> dict[str, Any]:
        return dict(self.config["pruning"])

    @property
    def keep_mask(self) -> torch.Tensor:
        return mask_of(self.config["pruning"])


def expose_pruned_class(cls: type[PrunedConfigMixin], dense_class: type[ModelMixin]) -> None:
    """Make ``cls`` loadable the way diffusers loads ``dense_class``; ``cls`` must define ``__init__``
    itself (the signature is set on that function, which a shared one would leak to other classes)."""
    # diffusers reads the constructor's signature to know which config keys it takes.
    params = list(inspect.signature(dense_class.__init__).parameters.values())
    vars(cls)["__init__"].__signature__ = inspect.Signature(
        [*params, inspect.Parameter("pruning", inspect.Parameter.KEYWORD_ONLY, default=None)])
    # Saved pipelines name a component by (module, class); the stable public name keeps folders loadable
    # when the implementation moves (`prunekit` resolves it lazily).
    cls.__module__ = "prunekit"


def pruned_skeleton(cls: type[_P], dense_config: Mapping[str, Any], pruning: Mapping[str, Any]) -> _P:
    """The pruned architecture on the meta device (no weights)."""
    config = {k: v for k, v in dict(dense_config).items() if k != "pruning"}
    with torch.device("meta"):
        model = cls.from_config({**config, "pruning": dict(pruning)})
    assert isinstance(model, cls)
    return model
