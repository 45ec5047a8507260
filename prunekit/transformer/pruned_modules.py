"""Stand-ins that physical pruning puts where a transformer block or a whole attention disappears.

Each computes what the gated model computes with the corresponding gates at 0 and takes the call
signature diffusers uses for the module it replaces. (Zero-width FFNs reuse the U-Net's
``FeedForwardBiasOnly``, zero-head PixArt / SD3.5-dual attentions its ``AttentionBiasOnly``.)
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class SkippedBlock(nn.Module):
    """A depth-pruned transformer block: returns its streams unchanged.

    ``pair``: the block returns ``(text, image)`` (SD3 / Flux) rather than the image stream (PixArt).
    ``context_pre_only`` mirrors SD3's last block, whose text output is None and which the SD3 forward
    reads as an attribute.
    """

    def __init__(self, pair: bool, context_pre_only: bool | None = None) -> None:
        super().__init__()
        self.pair = pair
        self.context_pre_only = context_pre_only

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> Any:
        if not self.pair:
            return hidden_states
        text = args[0] if args else kwargs.get("encoder_hidden_states")
        return (None if self.context_pre_only else text), hidden_states

    def extra_repr(self) -> str:
        return f"pair={self.pair}, context_pre_only={self.context_pre_only}"


def _constant(bias: nn.Parameter | None, like: torch.Tensor, features: int) -> torch.Tensor:
    shape = (*like.shape[:-1], features)
    if bias is None:
        return like.new_zeros(shape)
    # A materialised tensor, not a view of the parameter: module trackers hook outputs' autograd.
    return bias.to(like.dtype).expand(shape).contiguous()


class JointAttentionBiasOnly(nn.Module):
    """A joint (image + text) attention whose heads are all pruned: each stream's output projection sees
    zeros, so only its bias is left. Without ``to_add_out`` (SD3's context_pre_only block) the text
    output is an empty tensor, which that block discards."""

    def __init__(self, out_features: int, out_bias: bool, context_features: int | None, context_bias: bool) -> None:
        super().__init__()
        self.out_features, self.context_features = out_features, context_features
        self.bias = nn.Parameter(torch.empty(out_features)) if out_bias else None
        has_context_bias = context_features is not None and context_bias
        self.context_bias = nn.Parameter(torch.empty(context_features or 0)) if has_context_bias else None

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                *args: Any, **kwargs: Any) -> Any:
        out = _constant(self.bias, hidden_states, self.out_features)
        if encoder_hidden_states is None:
            return out
        features = 0 if self.context_features is None else self.context_features
        return out, _constant(self.context_bias, encoder_hidden_states, features)


class NoHeads(nn.Module):
    """A Flux single block's attention with every head pruned: its (heads * head_dim) output is empty."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        return hidden_states.new_zeros((*hidden_states.shape[:-1], 0))
