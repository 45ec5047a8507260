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

import contextvars
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from torch import nn

from .inventory import DepthLayout, Inventory, Layer, Unit, build_inventory


@dataclass(frozen=True)
class _GateState:
    owner: object
    channels: torch.Tensor  # (batch or 1, total gated channels)
    depth: torch.Tensor  # (batch or 1, depth units)


# One module-level variable (context variables must not be created per instance); the state names its
# owner so that two instrumented U-Nets never read each other's gates.
_ACTIVE: contextvars.ContextVar[_GateState | None] = contextvars.ContextVar("prunekit_unet_gates", default=None)


def _state_for(owner: object) -> _GateState | None:
    state = _ACTIVE.get()
    if state is None or state.owner is not owner:
        return None
    return state


class _WidthHook:
    """Forward hook (ResNet norm2, FFN net[0]) or forward pre-hook (attention to_out[0]) for one layer."""

    def __init__(self, owner: object, start: int, stop: int, layout: str) -> None:
        self.owner, self.start, self.stop, self.layout = owner, start, stop, layout

    def _gate(self, x: torch.Tensor, state: _GateState) -> torch.Tensor:
        g = state.channels[:, self.start : self.stop]
        if self.layout == "nchw":
            g = g[:, :, None, None]
        else:
            g = g[:, None, :]
        return x * g.to(x.dtype)

    def forward_hook(self, module: nn.Module, args: tuple, output: torch.Tensor) -> torch.Tensor | None:
        state = _state_for(self.owner)
        return None if state is None else self._gate(output, state)

    def pre_hook(self, module: nn.Module, args: tuple) -> tuple | None:
        state = _state_for(self.owner)
        if state is None:
            return None
        return (self._gate(args[0], state), *args[1:])


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


class _RunWithGates:
    """Calls ``module`` with a given gate state active; stands in for the module under checkpointing."""

    def __init__(self, module: nn.Module, state: _GateState) -> None:
        self.module, self.state = module, state

    def __call__(self, *args: Any, **kwargs: Any) -> Any:
        token = _ACTIVE.set(self.state)
        try:
            return self.module(*args, **kwargs)
        finally:
            _ACTIVE.reset(token)


class _Checkpointable(Protocol):
    """A diffusers block that supports activation checkpointing (its attributes are set dynamically)."""

    gradient_checkpointing: bool
    _gradient_checkpointing_func: Callable[..., Any]


class _GateAwareCheckpoint:
    """Wraps a block's ``_gradient_checkpointing_func``.

    Activation checkpointing re-runs the block during backward, after ``forward`` has returned and the
    gate context is gone; the wrapper captures the gates at forward time so the recomputation sees them.
    """

    def __init__(self, inner: Callable[..., Any]) -> None:
        self.inner = inner

    def __call__(self, module: nn.Module, *args: Any, **kwargs: Any) -> Any:
        state = _ACTIVE.get()
        target = module if state is None else _RunWithGates(module, state)
        return self.inner(target, *args, **kwargs)


class PrunableUNet(nn.Module):
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

    # Non-persistent buffers registered in __init__ (declared so they are typed as tensors).
    _channel_unit: torch.Tensor
    _depth_units: torch.Tensor

    def __init__(self, unet: nn.Module, depth: DepthLayout = "aptp", *, ffn_groups: int = 32) -> None:
        super().__init__()
        self.unet = unet
        self.inventory: Inventory = build_inventory(unet, depth, ffn_groups=ffn_groups)
        self._owner = object()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._mac_models: dict[tuple, Any] = {}

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
        channel_index = torch.cat(channel_unit) if channel_unit else torch.zeros(0, dtype=torch.long)
        depth_index = torch.tensor([layer.start for layer in self.inventory.depth_layers], dtype=torch.long)
        self._depth_units_cpu = depth_index
        param = next(unet.parameters(), None)
        device = param.device if param is not None and not param.is_meta else torch.device("cpu")
        # Buffers follow .to(); _resolve still moves them if only the wrapped U-Net was moved.
        self.register_buffer("_channel_unit", channel_index.to(device), persistent=False)
        self.register_buffer("_depth_units", depth_index.to(device), persistent=False)
        # cast: the hasattr test is what selects the blocks that carry diffusers' checkpointing attributes.
        self._checkpointable = [cast(_Checkpointable, m) for m in unet.modules()
                                if hasattr(m, "gradient_checkpointing")]

    # --- description -------------------------------------------------------------------------------
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
        """Unit indices of each width layer (ResNet, attention, FFN); depth units are not in any group."""
        return [torch.arange(layer.start, layer.stop) for layer in self.inventory.width_layers]

    @property
    def depth_indices(self) -> torch.Tensor:
        return self._depth_units_cpu.clone()

    @property
    def width_indices(self) -> torch.Tensor:
        return torch.arange(len(self.inventory.units) - len(self.inventory.depth_layers))

    @property
    def config(self) -> Any:
        return self.unet.config

    @property
    def dtype(self) -> torch.dtype:
        return next(self.unet.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self.unet.parameters()).device

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
        g = g.to(self.dtype)  # once here, so the hooks multiply in the activations' dtype without casts
        channels = g.index_select(1, self._channel_unit.to(g.device))
        depth = g.index_select(1, self._depth_units.to(g.device))
        return _GateState(self._owner, channels, depth)

    def _wrap_checkpointing(self) -> None:
        for module in self._checkpointable:
            func = getattr(module, "_gradient_checkpointing_func", None)
            if module.gradient_checkpointing and func is not None and not isinstance(func, _GateAwareCheckpoint):
                module._gradient_checkpointing_func = _GateAwareCheckpoint(func)

    def forward(self, sample: torch.Tensor, timestep: Any, encoder_hidden_states: torch.Tensor,
                gates: torch.Tensor | None = None, **unet_kwargs: Any) -> Any:
        # Inputs follow the U-Net's dtype, so a bf16 teacher is driven by fp32 data and fp32 gates.
        dtype = self.dtype
        sample = sample.to(dtype)
        encoder_hidden_states = encoder_hidden_states.to(dtype)
        if gates is None:
            return self.unet(sample, timestep, encoder_hidden_states, **unet_kwargs)
        if not self._handles:
            raise RuntimeError("this PrunableUNet was restored; its hooks are gone")
        state = self._resolve(gates, sample.shape[0])
        if torch.is_grad_enabled():
            self._wrap_checkpointing()
        token = _ACTIVE.set(state)
        try:
            return self.unet(sample, timestep, encoder_hidden_states, **unet_kwargs)
        finally:
            _ACTIVE.reset(token)

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

    # --- teardown ----------------------------------------------------------------------------------
    def restore(self) -> nn.Module:
        """Remove every hook and checkpoint wrapper; returns the stock U-Net, as it was."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self._checkpointable:
            func = getattr(module, "_gradient_checkpointing_func", None)
            if isinstance(func, _GateAwareCheckpoint):
                module._gradient_checkpointing_func = func.inner
        return self.unet


def make_prunable(unet: nn.Module, depth: DepthLayout = "aptp", *, ffn_groups: int = 32) -> PrunableUNet:
    """Instrument a stock ``UNet2DConditionModel`` for gating (no copy of its weights).

    ``depth``: "aptp" (last ResNet and last Transformer2D of each down/up block, the paper's layout),
    "all" (every skippable down/up block), None (no depth units) or an explicit list of block paths.
    ``ffn_groups``: channel groups per feed-forward inner dimension.
    """
    return PrunableUNet(unet, depth, ffn_groups=ffn_groups)
