"""Gated forward of a stock U-Net: hooks multiply activations by per-sample gate values.

Gates are forward inputs. ``PrunableUNet.forward`` turns the (batch, units) gate matrix into one
(batch, channels) matrix with a single gather and publishes it in a context variable for the duration of
the call; each hook only slices its columns, so applying the gates costs one gather plus one multiply per
gated layer, with no Python loop over samples.

Where the gates act:
- ResNet groups: on the output of ``norm2``. silu(0) == 0, so a zero gate is the same as removing the
  channels from conv1, norm2, time_emb_proj and conv2.
- Attention heads: on the input of ``to_out[0]`` (the concatenated head outputs). A hook there works with
  every attention processor that ends in ``to_out[0]`` (SDPA, xformers, sliced), so no processor code is
  duplicated.
- FFN groups: on the output of ``ff.net[0]`` (after GEGLU).
- Depth: on the output of the ResNet / Transformer2D block: ``u*f(x) + (1-u)*x`` (decoder ResNets use the
  ``h`` part of ``cat[h, skip]`` as ``x``).
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

# The gate context is re-exported: code written before gated_denoiser existed reads it from here.
from ..gated_denoiser import _ACTIVE as _ACTIVE
from ..gated_denoiser import _GatedDenoiser, _state_for, _WidthHook
from .inventory import DepthLayout, build_inventory


class _DepthHook:
    """Forward hook (with kwargs) on a ResNet or Transformer2D block: ``u*f(x) + (1-u)*x``."""

    def __init__(self, owner: object, column: int, identity_channels: int | None, transformer: bool) -> None:
        self.owner, self.column = owner, column
        self.identity_channels, self.transformer = identity_channels, transformer

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        state = _state_for(self.owner)
        if state is None:
            return None
        name = "hidden_states" if self.transformer else "input_tensor"
        x = args[0] if args else kwargs[name]
        if self.identity_channels is not None:
            x = x[:, : self.identity_channels]
        u = state.depth[:, self.column].reshape(-1, *([1] * (x.ndim - 1)))
        if not self.transformer:
            u = u.to(output.dtype)
            return u * output + (1 - u) * x
        sample = output[0] if isinstance(output, tuple) else output.sample
        u = u.to(sample.dtype)
        mixed = u * sample + (1 - u) * x
        if isinstance(output, tuple):
            return (mixed, *output[1:])
        return type(output)(sample=mixed)


class PrunableUNet(_GatedDenoiser):
    """A stock ``UNet2DConditionModel`` with gate hooks; the wrapped model keeps its own weights.

    Build it with :func:`make_prunable`. ``forward(sample, timestep, encoder_hidden_states, gates=None,
    **unet_kwargs)`` returns what the U-Net returns. ``gates`` may be:

    - ``None``: the stock forward, hooks do nothing;
    - shape ``(units,)``: one architecture for the whole batch;
    - shape ``(batch, units)``: one per sample;
    - shape ``(b, units)`` with the latent batch ``k*b``: the gates are tiled ``k`` times along the batch,
      matching how diffusers pipelines build classifier-free-guidance batches (``cat([x] * 2)``).

    Values are arbitrary floats (soft gates; gradients flow to them) or hard {0, 1}.

    A U-Net may be instrumented several times (e.g. with different depth layouts): every hook only acts
    during its own wrapper's forward, so the instrumentations never see each other's gates.
    """

    def __init__(self, unet: nn.Module, depth: DepthLayout = "aptp", *, ffn_groups: int = 32) -> None:
        super().__init__()
        self.unet = unet
        self.inventory = build_inventory(unet, depth, ffn_groups=ffn_groups)

        channel_unit: list[torch.Tensor] = []
        offset = 0
        depth_column = {layer.start: k for k, layer in enumerate(self.inventory.depth_layers)}
        for layer in self.inventory.layers:
            if layer.kind in ("depth_resnet", "depth_transformer"):
                block = unet.get_submodule(layer.path)
                depth_hook = _DepthHook(self._owner, depth_column[layer.start], layer.identity_channels,
                                        layer.kind == "depth_transformer")
                self._handles.append(block.register_forward_hook(depth_hook, with_kwargs=True))
                continue
            units = torch.arange(layer.start, layer.stop)
            channel_unit.append(units.repeat_interleave(layer.size))
            hook = _WidthHook(self._owner, offset, offset + layer.channels,
                              "nchw" if layer.kind == "resnet_group" else "nlc")
            offset += layer.channels
            # get_submodule walks ModuleList indices too ("to_out.0"), and returns a typed nn.Module.
            if layer.kind == "resnet_group":
                target = unet.get_submodule(f"{layer.path}.norm2")
                self._handles.append(target.register_forward_hook(hook.forward_hook))
            elif layer.kind == "attn_head":
                target = unet.get_submodule(f"{layer.path}.to_out.0")
                self._handles.append(target.register_forward_pre_hook(hook.pre_hook))
            else:
                target = unet.get_submodule(f"{layer.path}.net.0")
                self._handles.append(target.register_forward_hook(hook.forward_hook))
        self._index_units(channel_unit)

    @property
    def _wrapped(self) -> nn.Module:
        return self.unet

    # --- forward -----------------------------------------------------------------------------------
    def forward(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor,
                gates: torch.Tensor | None = None, **unet_kwargs: Any) -> Any:
        # Inputs follow the U-Net's dtype, so a bf16 teacher is driven by fp32 data and fp32 gates.
        dtype = self.dtype
        sample = sample.to(dtype)
        encoder_hidden_states = encoder_hidden_states.to(dtype)
        return self._call_gated(gates, sample.shape[0],
                                lambda: self.unet(sample, timestep, encoder_hidden_states, **unet_kwargs))

    # --- budget ------------------------------------------------------------------------------------
    def mac_model(self, *, height: int, width: int, text_len: int = 77,
                  added_cond_kwargs: dict[str, torch.Tensor] | None = None) -> Any:
        """The MAC model at one latent size and text length (cached; see :class:`prunekit.unet.MacModel`)."""
        from .macs import build_mac_model

        key = (height, width, text_len, None if added_cond_kwargs is None else
               tuple(sorted((k, tuple(v.shape)) for k, v in added_cond_kwargs.items())))
        if key not in self._mac_models:
            self._mac_models[key] = build_mac_model(self.unet, self.inventory, height=height, width=width,
                                                    text_len=text_len, added_cond_kwargs=added_cond_kwargs)
        return self._mac_models[key]


def make_prunable(unet: nn.Module, depth: DepthLayout = "aptp", *, ffn_groups: int = 32) -> PrunableUNet:
    """Instrument a stock ``UNet2DConditionModel`` for gating (no copy of its weights).

    ``depth``: "aptp" (last ResNet and last Transformer2D of each down/up block, the paper's layout),
    "all" (every skippable down/up block), None (no depth units) or an explicit list of block paths.
    ``ffn_groups``: channel groups per feed-forward inner dimension.
    """
    return PrunableUNet(unet, depth, ffn_groups=ffn_groups)
