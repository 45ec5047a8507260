"""The weights of a physically pruned model, cut from its dense model's: the step every family shares.

A family's ``apply_structure`` reshapes a meta-device skeleton and says, in a :data:`SliceMap`, how each
changed state-dict entry is cut from the dense one; :func:`load_sliced` then fills the pruned model with
fresh copies, so fine-tuning it never touches the dense model.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
from torch import nn

# target state-dict key -> (source key, dim to slice along or None, indices or None)
SliceMap = dict[str, tuple[str, int | None, torch.Tensor | None]]


def differing_entries(source: Mapping[str, torch.Tensor], reference: Mapping[str, torch.Tensor]) -> list[str]:
    """State-dict keys that ``source`` and ``reference`` do not share with the same shape (those of
    ``source`` first). Pruning rebuilds the architecture from the config, so a model that differs from
    what its config builds cannot be pruned correctly."""
    mismatched = [k for k in source if k not in reference or reference[k].shape != source[k].shape]
    missing = [k for k in reference if k not in source]
    return mismatched + missing


def load_sliced(pruned: nn.Module, dense: nn.Module, source: Mapping[str, torch.Tensor], slices: SliceMap) -> None:
    """Give ``pruned`` (its structure applied, on meta) the entries of ``source`` (``dense``'s state
    dict) cut as ``slices`` says, plus ``dense``'s unsaved buffers, its parameters' ``requires_grad``
    and its train / eval mode."""
    state: dict[str, torch.Tensor] = {}
    with torch.no_grad():
        for key in pruned.state_dict():
            src_key, dim, index = slices.get(key, (key, None, None))
            tensor = source[src_key]
            if dim is not None:
                assert index is not None  # a sliced entry always carries its indices
                state[key] = tensor.index_select(dim, index.to(tensor.device))
            else:
                state[key] = tensor.clone()
    pruned.load_state_dict(state, strict=True, assign=True)
    # Buffers that are not saved (PixArt's position table) are not in the state dict: copy them.
    for name, buffer in list(pruned.named_buffers()):
        if buffer.is_meta:
            owner, _, leaf = name.rpartition(".")
            pruned.get_submodule(owner)._buffers[leaf] = dense.get_buffer(name).clone()
    source_params = dict(dense.named_parameters())
    for name, param in pruned.named_parameters():
        param.requires_grad_(source_params[slices.get(name, (name, None, None))[0]].requires_grad)
    pruned.train(dense.training)
