"""What a gated denoiser is, whatever the architecture: the gate context, the hooks' plumbing, the
common description and the gate resolution of :class:`prunekit.unet.PrunableUNet` and
:class:`prunekit.transformer.PrunableTransformer`.

Gates are forward inputs. ``forward`` turns the (batch, units) gate matrix into one (batch, channels)
matrix with a single gather and publishes it in a context variable for the duration of the call; each
hook only slices its columns, so applying the gates costs one gather plus one multiply per gated layer,
with no Python loop over samples. Where the hooks sit is the architecture's business (its subclass).
"""

from __future__ import annotations

import abc
import contextvars
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, TypeVar, cast

import torch
from torch import nn

if TYPE_CHECKING:
    from .unet.inventory import Inventory, Layer, Unit

_T = TypeVar("_T")


@dataclass(frozen=True)
class _GateState:
    owner: object
    channels: torch.Tensor  # (batch or 1, total gated channels)
    depth: torch.Tensor  # (batch or 1, depth units)


# One module-level variable (context variables must not be created per instance); the state names its
# owner so that two instrumented denoisers (a U-Net and a transformer side by side, or one model
# instrumented twice) never read each other's gates.
_ACTIVE: contextvars.ContextVar[_GateState | None] = contextvars.ContextVar("prunekit_unet_gates", default=None)


def _state_for(owner: object) -> _GateState | None:
    state = _ACTIVE.get()
    if state is None or state.owner is not owner:
        return None
    return state


class _WidthHook:
    """Forward hook (output gating) or forward pre-hook (input gating) for one width layer."""

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


class _GatedDenoiser(nn.Module, abc.ABC):
    """The architecture-free half of a prunable denoiser.

    A subclass registers the wrapped model under its own attribute (``unet``, ``model``: the name is in
    the state-dict keys, so it stays), returns it from :attr:`_wrapped`, sets ``inventory``, installs its
    hooks, and ends its ``__init__`` with :meth:`_index_units`.
    """

    inventory: Inventory
    # Non-persistent buffers registered by _index_units (declared so they are typed as tensors).
    _channel_unit: torch.Tensor
    _depth_units: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self._owner = object()
        self._handles: list[torch.utils.hooks.RemovableHandle] = []
        self._mac_models: dict[tuple, Any] = {}

    @property
    @abc.abstractmethod
    def _wrapped(self) -> nn.Module:
        """The stock model the hooks sit on."""

    def _index_units(self, channel_unit: list[torch.Tensor]) -> None:
        """Store the gathers ``_resolve`` needs: ``channel_unit`` holds, per hooked width layer in hook
        order, the unit of each of its channels."""
        model = self._wrapped
        channel_index = torch.cat(channel_unit) if channel_unit else torch.zeros(0, dtype=torch.long)
        depth_index = torch.tensor([layer.start for layer in self.inventory.depth_layers], dtype=torch.long)
        self._depth_units_cpu = depth_index
        param = next(model.parameters(), None)
        device = param.device if param is not None and not param.is_meta else torch.device("cpu")
        # Buffers follow .to(); _resolve still moves them if only the wrapped model was moved.
        self.register_buffer("_channel_unit", channel_index.to(device), persistent=False)
        self.register_buffer("_depth_units", depth_index.to(device), persistent=False)
        # cast: the hasattr test is what selects the blocks that carry diffusers' checkpointing attributes.
        self._checkpointable = [cast(_Checkpointable, m) for m in model.modules()
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
        """Unit indices of each width layer (ResNet groups, heads, FFN / MLP groups); depth units are in
        none."""
        return [torch.arange(layer.start, layer.stop) for layer in self.inventory.width_layers]

    @property
    def depth_indices(self) -> torch.Tensor:
        return self._depth_units_cpu.clone()

    @property
    def width_indices(self) -> torch.Tensor:
        return torch.arange(self.num_units - len(self.inventory.depth_layers))

    @property
    def config(self) -> Any:
        return self._wrapped.config

    @property
    def dtype(self) -> torch.dtype:
        return next(self._wrapped.parameters()).dtype

    @property
    def device(self) -> torch.device:
        return next(self._wrapped.parameters()).device

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

    def _call_gated(self, gates: torch.Tensor | None, batch: int, call: Callable[[], _T]) -> _T:
        """``call()`` (one forward of the wrapped model) with ``gates`` active; without gates, the stock
        forward, which the hooks leave alone."""
        if gates is None:
            return call()
        if not self._handles:
            raise RuntimeError(f"this {type(self).__name__} was restored; its hooks are gone")
        state = self._resolve(gates, batch)
        if torch.is_grad_enabled():
            self._wrap_checkpointing()
        token = _ACTIVE.set(state)
        try:
            return call()
        finally:
            _ACTIVE.reset(token)

    # --- teardown ----------------------------------------------------------------------------------
    def restore(self) -> nn.Module:
        """Remove every hook and checkpoint wrapper; returns the wrapped model, as it was."""
        for handle in self._handles:
            handle.remove()
        self._handles.clear()
        for module in self._checkpointable:
            func = getattr(module, "_gradient_checkpointing_func", None)
            if isinstance(func, _GateAwareCheckpoint):
                module._gradient_checkpointing_func = func.inner
        return self._wrapped
