"""Prunable stock diffusers U-Nets: gating, unit inventory, MAC model, physical pruning, experts.

Typical use::

    prunable = make_prunable(unet)                      # hooks only; weights are shared, not copied
    out = prunable(x, t, text, gates=gates)             # gates: (units,) or (batch, units)
    macs = prunable.mac_model(height=32, width=32)(gates)
    expert = physically_prune(prunable, mask)           # a PrunedUNet2DConditionModel
    expert.save_pretrained("experts/0")                 # or save_expert(expert, mask, "experts/0")
    PrunedUNet2DConditionModel.from_pretrained("experts/0")
"""

from .configs import sd15_unet_config, sd21_unet_config, sdxl_unet_config
from .expert import ExpertSpec, load_expert, read_expert_spec, save_expert
from .gating import PrunableUNet, make_prunable
from .inventory import DEPTH_KINDS, WIDTH_KINDS, Inventory, Layer, Unit, build_inventory
from .macs import (
    MacModel,
    count_macs,
    example_inputs,
    flop_counter_mode,
    macs_by_op,
    measure_macs,
    paper_convention_macs,
)
from .prune import physically_prune, round_mask
from .pruned_model import PrunedUNet2DConditionModel, pruning_entry

__all__ = [
    "DEPTH_KINDS",
    "WIDTH_KINDS",
    "ExpertSpec",
    "Inventory",
    "Layer",
    "MacModel",
    "PrunableUNet",
    "PrunedUNet2DConditionModel",
    "Unit",
    "build_inventory",
    "count_macs",
    "example_inputs",
    "flop_counter_mode",
    "load_expert",
    "macs_by_op",
    "make_prunable",
    "measure_macs",
    "paper_convention_macs",
    "physically_prune",
    "pruning_entry",
    "read_expert_spec",
    "round_mask",
    "save_expert",
    "sd15_unet_config",
    "sd21_unet_config",
    "sdxl_unet_config",
]
