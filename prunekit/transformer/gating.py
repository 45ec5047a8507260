"""Gated forward of a stock diffusers transformer denoiser, by hooks (no diffusers code is copied).

Same mechanism as :mod:`prunekit.unet.gating` (and the same context variable, so a U-Net and a
transformer instrumented side by side never read each other's gates): ``forward`` turns the (batch,
units) gates into one (batch, channels) matrix and every hook slices its columns.

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

from collections.abc import Sequence
from typing import Any, cast

import torch
from torch import nn

from ..unet.gating import _ACTIVE, _Checkpointable, _GateAwareCheckpoint, _GateState, _state_for, _WidthHook
from ..unet.inventory import Layer, Unit
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


class PrunableTransformer(nn.Module):
    """A stock PixArt / SD3 / Flux transformer with gate hooks; the wrapped model keeps its weights.

    The interface is :class:`prunekit.unet.PrunableUNet`'s: ``forward(sample, timestep,
    encoder_hidden_states, gates=None, **model_kwargs)`` calls the model with those three as keywords
    plus ``model_kwargs`` (SD3 / Flux: ``pooled_projections``; Flux: packed latents as ``sample``,
    ``img_ids``, ``txt_ids``, ``guidance``; PixArt: ``added_cond_kwargs``) and returns what it returns.
    ``gates``: None, (units,), (batch, units), or (b, units) tiled over a latent batch ``k*b``.
    """

    _channel_unit: torch.Tensor
    _depth_units: torch.Tensor

    def __init__(self, model: nn.Module, depth: TransformerDepth = "all", *, ffn_groups: int = 32) -> None:
        super().__init__()
        self.model = model
        self.inventory: TransformerInventory = build_inventory(model, depth, ffn_groups=ffn_groups)
        self._owner = object()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._mac_models: dict[tuple, Any] = {}

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
        channel_index = torch.cat(channel_unit) if channel_unit else torch.zeros(0, dtype=torch.long)
        depth_index = torch.tensor([layer.start for layer in self.inventory.depth_layers], dtype=torch.long)
        self._depth_units_cpu = depth_index
        param = next(model.parameters(), None)
        device = param.device if param is not None and not param.is_meta else torch.device("cpu")
        self.register_buffer("_channel_unit", channel_index.to(device), persistent=False)
        self.register_buffer("_depth_units", depth_index.to(device), persistent=False)
        self._checkpointable = [cast(_Checkpointable, m) for m in model.modules()
                                if hasattr(m, "gradient_checkpointing")]

    # --- description (PrunableUNet's names) --------------------------------------------------------
    @property
    def family(self) -> str:
        return self.inventory.family

    @property
    def unet(self) -> nn.Module:
        """The wrapped model, under the name code written for ``PrunableUNet`` reads."""
        return self.model

    @property
    def num_units(self) -> int:
        return self.inventory.num_units

    @property
    def units(self) -> tuple[Unit, ...]:
        return self.inventory.units

    @property
    def layers(self) -> tuple[Layer, ...]:
        return self.inventory.layers

    @property
    def groups(self) -> list[torch.Tensor]:
        """Unit indices of each width layer (heads, FFN / MLP groups); depth units are in none."""
        return [torch.arange(layer.start, layer.stop) for layer in self.inventory.width_layers]

    @property
    def depth_indices(self) -> torch.Tensor:
        return self._depth_units_cpu.clone()

    @property
    def width_indices(self) -> torch.Tensor:
        return torch.arange(self.num_units - len(self.inventory.depth_layers))

    @property
    def config(self) -> Any:
        return self.model.config

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    def dense_gates(self, batch: int | None = None) -> torch.Tensor:
        shape = (self.num_units,) if batch is None else (batch, self.num_units)
        return torch.ones(shape, device=self.device)

    # --- forward -----------------------------------------------------------------------------------
    def _resolve(self, gates: torch.Tensor | Sequence[float], batch: int) -> _GateState:
        g = torch.as_tensor(gates, device=self.device)
        if not g.is_floating_point():
            g = g.to(torch.float32)
        if g.ndim == 1:
            g = g[None]
        if g.ndim != 2 or g.shape[1] != self.num_units:
            raise ValueError(f"gates must have shape (units,) or (batch, units) with units={self.num_units}, "
                             f"got {tuple(g.shape)}")
        if g.shape[0] not in (1, batch):
            if batch % g.shape[0]:
                raise ValueError(f"gates batch {g.shape[0]} does not divide the latent batch {batch}")
            g = g.repeat(batch // g.shape[0], 1)
        g = g.to(self.dtype)
        channels = g.index_select(1, self._channel_unit.to(g.device))
        depth = g.index_select(1, self._depth_units.to(g.device))
        return _GateState(self._owner, channels, depth)

    def _wrap_checkpointing(self) -> None:
        for module in self._checkpointable:
            func = getattr(module, "_gradient_checkpointing_func", None)
            if module.gradient_checkpointing and func is not None and not isinstance(func, _GateAwareCheckpoint):
                module._gradient_checkpointing_func = _GateAwareCheckpoint(func)

    def forward(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor,
                gates: torch.Tensor | None = None, **model_kwargs: Any) -> Any:
        dtype = self.dtype
        call = dict(hidden_states=sample.to(dtype), timestep=timestep,
                    encoder_hidden_states=encoder_hidden_states.to(dtype), **model_kwargs)
        if gates is None:
            return self.model(**call)
        if not self._handles:
            raise RuntimeError("this PrunableTransformer was restored; its hooks are gone")
        state = self._resolve(gates, sample.shape[0])
        if torch.is_grad_enabled():
            self._wrap_checkpointing()
        token = _ACTIVE.set(state)
        try:
            return self.model(**call)
        finally:
            _ACTIVE.reset(token)

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

    # --- teardown ----------------------------------------------------------------------------------
    def restore(self) -> nn.Module:
        """Remove every hook and checkpoint wrapper; returns the stock model, as it was."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self._checkpointable:
            func = getattr(module, "_gradient_checkpointing_func", None)
            if isinstance(func, _GateAwareCheckpoint):
                module._gradient_checkpointing_func = func.inner
        return self.model


def make_prunable(model: nn.Module, depth: TransformerDepth = "all", *, ffn_groups: int = 32) -> PrunableTransformer:
    """Instrument a stock PixArt / SD3 / Flux transformer for gating (no copy of its weights).

    ``depth``: "all" (every transformer block is a depth unit), None, or a list of block paths
    ("transformer_blocks.3", "single_transformer_blocks.0"). ``ffn_groups``: groups per FFN / MLP width.
    """
    return PrunableTransformer(model, depth, ffn_groups=ffn_groups)
