"""Gated forward of a stock diffusers transformer denoiser, by hooks (no diffusers code is copied).

Same mechanism as :mod:`prunekit.unet.gating`, both built on :mod:`prunekit.gated_denoiser` (one gate
context whose state names its owner, so a U-Net and a transformer instrumented side by side never read
each other's gates): ``forward`` turns the (batch, units) gates into one (batch, channels) matrix and
every hook slices its columns.

Where the gates act:
- Heads: on the input of the attention output projection(s), i.e. the concatenated head outputs. For
  joint attention (SD3, Flux double blocks) the same head gates multiply the input of ``to_out[0]`` and
  of ``to_add_out``, so a zero gate removes the head from both streams, which is what dropping its q/k/v
  slices in both streams computes. Flux single blocks have no attention output projection; the gates
  multiply the attention output before it is concatenated into the shared ``proj_out``.
- FFN / MLP groups: on the activation output (``ff.net[0]``, Flux single blocks' ``act_mlp``).
- Depth: on the block output, ``u*f(x) + (1-u)*x`` in every stream the block returns.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from ..gated_denoiser import _GatedDenoiser, _state_for, _WidthHook
from .inventory import TransformerDepth, TransformerInventory, build_inventory


class _BlockDepthHook:
    """Forward hook (with kwargs) on a transformer block: ``u*f(x) + (1-u)*x`` per returned stream.

    PixArt blocks return the image stream; SD3 / Flux blocks return ``(text, image)`` (text is None after
    SD3's context_pre_only block, and stays None).
    """

    def __init__(self, owner: object, column: int) -> None:
        self.owner, self.column = owner, column

    def __call__(self, module: nn.Module, args: tuple, kwargs: dict, output: Any) -> Any:
        state = _state_for(self.owner)
        if state is None:
            return None
        # Blocks are called with keywords, or positionally (hidden, encoder, ...) under checkpointing.
        x = args[0] if args else kwargs["hidden_states"]
        u = state.depth[:, self.column].reshape(-1, 1, 1)
        if isinstance(output, torch.Tensor):
            return _mix(u, output, x)
        text = args[1] if len(args) > 1 else kwargs.get("encoder_hidden_states")
        text_out, image_out = output
        if text_out is None:  # SD3's context_pre_only block: the text stream ends here
            return None, _mix(u, image_out, x)
        assert isinstance(text, torch.Tensor)  # a block that returns a text stream was given one
        mixed_text = _mix(u, text_out, text)
        return mixed_text, _mix(u, image_out, x)


def _mix(u: torch.Tensor, out: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    u = u.to(out.dtype)
    return u * out + (1 - u) * x


class PrunableTransformer(_GatedDenoiser):
    """A stock PixArt / SD3 / Flux transformer with gate hooks; the wrapped model keeps its weights.

    The interface is :class:`prunekit.unet.PrunableUNet`'s: ``forward(sample, timestep,
    encoder_hidden_states, gates=None, **model_kwargs)`` calls the model with those three as keywords
    plus ``model_kwargs`` (SD3 / Flux: ``pooled_projections``; Flux: packed latents as ``sample``,
    ``img_ids``, ``txt_ids``, ``guidance``; PixArt: ``added_cond_kwargs``) and returns what it returns.
    ``gates``: None, (units,), (batch, units), or (b, units) tiled over a latent batch ``k*b``.
    """

    inventory: TransformerInventory

    def __init__(self, model: nn.Module, depth: TransformerDepth = "all", *, ffn_groups: int = 32) -> None:
        super().__init__()
        self.model = model
        self.inventory = build_inventory(model, depth, ffn_groups=ffn_groups)

        channel_unit: list[torch.Tensor] = []
        offset = 0
        depth_column = {layer.start: k for k, layer in enumerate(self.inventory.depth_layers)}
        for layer in self.inventory.depth_layers:
            hook = _BlockDepthHook(self._owner, depth_column[layer.start])
            self._handles.append(model.get_submodule(layer.path).register_forward_hook(hook, with_kwargs=True))
        for layer, spec in zip(self.inventory.width_layers, self.inventory.specs, strict=True):
            channel_unit.append(torch.arange(layer.start, layer.stop).repeat_interleave(layer.size))
            width_hook = _WidthHook(self._owner, offset, offset + layer.channels, "nlc")
            offset += layer.channels
            for site in spec.gates:
                target = model.get_submodule(site.path)
                if site.where == "input":
                    self._handles.append(target.register_forward_pre_hook(width_hook.pre_hook))
                else:
                    self._handles.append(target.register_forward_hook(width_hook.forward_hook))
        self._index_units(channel_unit)

    @property
    def _wrapped(self) -> nn.Module:
        return self.model

    # --- description (PrunableUNet's names) --------------------------------------------------------
    @property
    def family(self) -> str:
        return self.inventory.family

    @property
    def unet(self) -> nn.Module:
        """The wrapped model, under the name code written for ``PrunableUNet`` reads."""
        return self.model

    # --- forward -----------------------------------------------------------------------------------
    def forward(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor,
                gates: torch.Tensor | None = None, **model_kwargs: Any) -> Any:
        dtype = self.dtype
        call = dict(hidden_states=sample.to(dtype), timestep=timestep,
                    encoder_hidden_states=encoder_hidden_states.to(dtype), **model_kwargs)
        return self._call_gated(gates, sample.shape[0], lambda: self.model(**call))

    # --- budget ------------------------------------------------------------------------------------
    def mac_model(self, *, height: int, width: int, text_len: int = 77, **_: Any) -> Any:
        """The MAC model at one latent size and text length (cached; a :class:`prunekit.unet.MacModel`).

        ``height``/``width`` are latent sizes (1024 px = 128 x 128 for all three families). Extra keywords
        of ``PrunableUNet.mac_model`` (``added_cond_kwargs``) are accepted and do not change any count.
        """
        from .macs import build_mac_model

        key = (height, width, text_len)
        if key not in self._mac_models:
            self._mac_models[key] = build_mac_model(self.model, self.inventory, height=height, width=width,
                                                    text_len=text_len)
        return self._mac_models[key]


def make_prunable(model: nn.Module, depth: TransformerDepth = "all", *, ffn_groups: int = 32) -> PrunableTransformer:
    """Instrument a stock PixArt / SD3 / Flux transformer for gating (no copy of its weights).

    ``depth``: "all" (every transformer block is a depth unit), None, or a list of block paths
    ("transformer_blocks.3", "single_transformer_blocks.0"). ``ffn_groups``: groups per FFN / MLP width.
    """
    return PrunableTransformer(model, depth, ffn_groups=ffn_groups)
