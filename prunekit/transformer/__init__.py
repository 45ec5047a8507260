"""Prunable diffusers transformer denoisers (PixArt, SD3 / SD3.5, Flux): the U-Net layer's interface.

Typical use (the same calls as :mod:`prunekit.unet`)::

    prunable = make_prunable(transformer)                       # hooks only; weights are shared
    out = prunable(latents, t, text, gates=gates, pooled_projections=pooled)
    macs = prunable.mac_model(height=128, width=128, text_len=333)(gates)
    pruned = physically_prune(prunable, mask)                   # e.g. a PrunedSD3Transformer2DModel
    pruned.save_pretrained("experts/0")
    PrunedSD3Transformer2DModel.from_pretrained("experts/0")
"""

from .configs import PUBLISHED, flux_dev_config, pixart_sigma_config, sd35_medium_config
from .gating import PrunableTransformer, make_prunable
from .inventory import GateSite, TransformerInventory, WidthSpec, build_inventory, family_of
from .macs import build_mac_model, example_inputs, macs_by_op, measure_macs
from .prune import apply_structure, physically_prune, round_mask
from .pruned_model import (
    PRUNED_CLASSES,
    PrunedFluxTransformer2DModel,
    PrunedPixArtTransformer2DModel,
    PrunedSD3Transformer2DModel,
    PrunedTransformerMixin,
    pruning_entry,
)

__all__ = [
    "PRUNED_CLASSES",
    "PUBLISHED",
    "GateSite",
    "PrunableTransformer",
    "PrunedFluxTransformer2DModel",
    "PrunedPixArtTransformer2DModel",
    "PrunedSD3Transformer2DModel",
    "PrunedTransformerMixin",
    "TransformerInventory",
    "WidthSpec",
    "apply_structure",
    "build_inventory",
    "build_mac_model",
    "example_inputs",
    "family_of",
    "flux_dev_config",
    "macs_by_op",
    "make_prunable",
    "measure_macs",
    "physically_prune",
    "pixart_sigma_config",
    "pruning_entry",
    "round_mask",
    "sd35_medium_config",
]
