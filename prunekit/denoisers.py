"""One entry point for every prunable denoiser: U-Nets (``prunekit.unet``) and transformers
(``prunekit.transformer``), picked by the model's class.

Both implementations give the same interface (num_units, units, layers, groups, depth_indices,
width_indices, dense_gates, forward(sample, timestep, encoder_hidden_states, gates=...), mac_model,
restore), so code written against ``make_prunable`` here does not care which denoiser it gates.
``depth=None`` below means each implementation's default layout ("aptp" for U-Nets, "all" transformer
blocks for transformers); pass ``depth="none"`` for no depth units.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any, Literal

import torch
from torch import nn

from .transformer.gating import PrunableTransformer
from .unet.gating import PrunableUNet
from .unet.inventory import Inventory

DenoiserKind = Literal["unet", "transformer"]
Prunable = PrunableUNet | PrunableTransformer


def denoiser_kind(model: nn.Module) -> DenoiserKind:
    """"unet" or "transformer" for a stock, gated or pruned denoiser."""
    from diffusers.models.unets.unet_2d_condition import UNet2DConditionModel

    from .transformer.inventory import family_of

    inner = model.model if isinstance(model, PrunableTransformer) else getattr(model, "unet", model)
    if isinstance(inner, UNet2DConditionModel):
        return "unet"
    family_of(inner)  # raises with the supported classes if it is neither
    return "transformer"


def _depth(depth: Any) -> dict[str, Any]:
    if depth is None:
        return {}
    return {"depth": None if depth == "none" else depth}


def make_prunable(model: nn.Module, depth: Any = None, *, ffn_groups: int = 32) -> Prunable:
    """Instrument a stock U-Net or PixArt / SD3 / Flux transformer for gating (hooks only, no copy)."""
    from .transformer.gating import make_prunable as make_transformer
    from .unet.gating import make_prunable as make_unet

    if denoiser_kind(model) == "unet":
        return make_unet(model, ffn_groups=ffn_groups, **_depth(depth))
    return make_transformer(model, ffn_groups=ffn_groups, **_depth(depth))


def physically_prune(model: nn.Module, mask: Any, *, round_to: int | None = None,
                     scores: torch.Tensor | None = None, depth: Any = None, ffn_groups: int = 32) -> nn.Module:
    """The physically pruned denoiser (``PrunedUNet2DConditionModel`` or ``Pruned<Family>``) under ``mask``."""
    from .transformer.prune import physically_prune as prune_transformer
    from .unet.prune import physically_prune as prune_unet

    kwargs: dict[str, Any] = {"round_to": round_to, "scores": scores, "ffn_groups": ffn_groups, **_depth(depth)}
    if denoiser_kind(model) == "unet":
        return prune_unet(model, mask, **kwargs)
    return prune_transformer(model, mask, **kwargs)


def build_inventory(model: nn.Module, depth: Any = None, *, ffn_groups: int = 32) -> Inventory:
    """The unit inventory of a stock U-Net or transformer (no hooks, nothing copied)."""
    from .transformer.inventory import build_inventory as transformer_inventory
    from .unet.inventory import build_inventory as unet_inventory

    if denoiser_kind(model) == "unet":
        return unet_inventory(model, ffn_groups=ffn_groups, **_depth(depth))
    return transformer_inventory(model, ffn_groups=ffn_groups, **_depth(depth))


def example_inputs(model: nn.Module, *, height: int, width: int, text_len: int = 77, batch: int = 1,
                   generator: torch.Generator | None = None) -> tuple[tuple, dict[str, Any]]:
    """Random (args, kwargs) for one forward of a stock or pruned denoiser at a ``height`` x ``width``
    latent (unpacked: Flux's inputs are packed here) and ``text_len`` tokens, on its device and dtype."""
    from .transformer.macs import example_inputs as transformer_inputs
    from .unet.macs import example_inputs as unet_inputs

    if denoiser_kind(model) == "unet":
        return unet_inputs(model, height=height, width=width, text_len=text_len, batch=batch, generator=generator)
    return (), transformer_inputs(model, height=height, width=width, text_len=text_len, batch=batch,
                                  generator=generator)


def measure_macs(model: nn.Module, *, height: int, width: int, text_len: int = 77) -> int:
    """MACs of one batch-1 forward of a stock or pruned denoiser, as built."""
    from .transformer.macs import measure_macs as transformer_macs
    from .unet.macs import measure_macs as unet_macs

    if denoiser_kind(model) == "unet":
        return unet_macs(model, height=height, width=width, text_len=text_len)
    return transformer_macs(model, height=height, width=width, text_len=text_len)


def round_mask(model: nn.Module, mask: Any, round_to: int, *, scores: torch.Tensor | None = None) -> torch.Tensor:
    """``mask`` with each width layer's kept count rounded up to a multiple of ``round_to``."""
    from .transformer.prune import round_mask as round_transformer
    from .unet.prune import round_mask as round_unet

    if denoiser_kind(model) == "unet":
        return round_unet(model, mask, round_to, scores=scores)
    return round_transformer(model, mask, round_to, scores=scores)


def save_expert(model: nn.Module, mask: Any, folder: str | os.PathLike, *, base_config: Any | None = None,
                depth: Any = "aptp", ffn_groups: int = 32, round_to: int | None = None,
                metadata: dict[str, Any] | None = None, overwrite: bool = False) -> Path:
    """Write a physically pruned denoiser as a diffusers model folder, never half-written.

    U-Nets: :func:`prunekit.unet.save_expert` (the arguments are its own). Transformers are already
    ``Pruned*`` models that carry their mask: ``metadata`` joins their ``pruning`` entry and
    ``save_pretrained`` writes to a temporary folder whose files are then renamed into ``folder``.
    """
    from .transformer.pruned_model import PrunedTransformerMixin
    from .unet.expert import save_expert as save_unet

    if not isinstance(model, PrunedTransformerMixin):
        return save_unet(model, mask, folder, base_config=base_config, depth=depth, ffn_groups=ffn_groups,
                         round_to=round_to, metadata=metadata, overwrite=overwrite)
    folder = Path(folder)
    if folder.exists() and any(folder.iterdir()) and not overwrite:
        raise FileExistsError(f"{folder} exists and is not empty; pass overwrite=True to replace the expert in it")
    pruning = model.pruning
    pruning["metadata"] = {**(pruning.get("metadata") or {}), **(metadata or {})}
    model.register_to_config(pruning=pruning)
    folder.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=folder, prefix=".saving.") as tmp:
        model.save_pretrained(tmp, safe_serialization=True)
        for path in Path(tmp).iterdir():
            os.replace(path, folder / path.name)
    return folder


def load_expert(folder: str | os.PathLike, *, device: str | torch.device = "cpu",
                dtype: torch.dtype | None = None) -> nn.Module:
    """A saved expert, in eval mode: a ``PrunedUNet2DConditionModel`` or a ``Pruned*Transformer2DModel``
    (by the class its ``config.json`` names)."""
    import json

    from .transformer.pruned_model import PRUNED_CLASSES
    from .unet.expert import load_expert as load_unet

    config = Path(folder) / "config.json"
    name = json.loads(config.read_text()).get("_class_name") if config.is_file() else None
    pruned = {cls.__name__: cls for cls in PRUNED_CLASSES.values()}
    if name not in pruned:
        return load_unet(folder, device=device, dtype=dtype)
    model: nn.Module = pruned[name].from_pretrained(str(folder), torch_dtype=dtype)
    return model.to(device).eval()
