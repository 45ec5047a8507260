"""Stand-ins that physical pruning puts where a whole block or a whole branch disappears.

Each computes exactly what the gated model computes when the corresponding gates are 0, so a pruned U-Net
equals the gated one. They take the call signatures diffusers' blocks use for the modules they replace.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


class SkippedResnet(nn.Module):
    """A depth-pruned ResnetBlock2D: the identity, or in the decoder the ``h`` part of ``cat[h, skip]``."""

    def __init__(self, identity_channels: int | None = None) -> None:
        super().__init__()
        self.identity_channels = identity_channels

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        if self.identity_channels is None:
            return input_tensor
        return input_tensor[:, : self.identity_channels]

    def extra_repr(self) -> str:
        return f"identity_channels={self.identity_channels}"


class SkippedTransformer(nn.Module):
    """A depth-pruned Transformer2DModel: returns its input in the shape the blocks unpack."""

    def forward(self, hidden_states: torch.Tensor, *args: Any, return_dict: bool = True, **kwargs: Any) -> Any:
        if not return_dict:
            return (hidden_states,)
        from diffusers.models.modeling_outputs import Transformer2DModelOutput

        return Transformer2DModelOutput(sample=hidden_states)


class ResnetShortcutOnly(nn.Module):
    """A ResnetBlock2D whose norm2 groups are all pruned.

    With no channel left, conv2 only adds its bias, so the block is ``(shortcut(x) + conv2.bias) / scale``.
    """

    def __init__(self, conv_shortcut: nn.Module | None, channels: int, has_bias: bool, output_scale_factor: float) -> None:
        super().__init__()
        self.conv_shortcut = conv_shortcut
        self.bias = nn.Parameter(torch.empty(channels)) if has_bias else None
        self.output_scale_factor = output_scale_factor

    def forward(self, input_tensor: torch.Tensor, temb: torch.Tensor | None = None, *args: Any, **kwargs: Any) -> torch.Tensor:
        out = input_tensor if self.conv_shortcut is None else self.conv_shortcut(input_tensor)
        if self.bias is not None:
            out = out + self.bias[None, :, None, None].to(out.dtype)
        return out / self.output_scale_factor


class AttentionBiasOnly(nn.Module):
    """An Attention whose heads are all pruned: ``to_out`` sees zeros, so only its bias is left."""

    def __init__(self, out_features: int, has_bias: bool, residual_connection: bool, rescale_output_factor: float) -> None:
        super().__init__()
        self.out_features = out_features
        self.bias = nn.Parameter(torch.empty(out_features)) if has_bias else None
        self.residual_connection = residual_connection
        self.rescale_output_factor = rescale_output_factor

    def forward(self, hidden_states: torch.Tensor, encoder_hidden_states: torch.Tensor | None = None,
                attention_mask: torch.Tensor | None = None, **kwargs: Any) -> torch.Tensor:
        shape = (*hidden_states.shape[:-1], self.out_features)
        if self.bias is None:
            out = hidden_states.new_zeros(shape)
        else:
            # A materialised tensor, not a view of the parameter: module trackers hook outputs' autograd.
            out = self.bias.to(hidden_states.dtype).expand(shape).contiguous()
        if self.residual_connection:
            out = out + hidden_states
        return out / self.rescale_output_factor


class FeedForwardBiasOnly(nn.Module):
    """A FeedForward whose inner groups are all pruned: only the output projection's bias is left."""

    def __init__(self, out_features: int, has_bias: bool) -> None:
        super().__init__()
        self.out_features = out_features
        self.bias = nn.Parameter(torch.empty(out_features)) if has_bias else None

    def forward(self, hidden_states: torch.Tensor, *args: Any, **kwargs: Any) -> torch.Tensor:
        shape = (*hidden_states.shape[:-1], self.out_features)
        if self.bias is None:
            return hidden_states.new_zeros(shape)
        return self.bias.to(hidden_states.dtype).expand(shape).contiguous()
