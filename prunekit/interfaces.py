"""The contracts between methods and the components a recipe selects.

A method only calls what these Protocols declare, so any plugin that satisfies one can stand in for a
built-in. Some kinds come in more than one shape; a component says which shapes it has when it
registers (``register("router", "mine", factory, provides=("trainable",))``), a method says which it
needs in its schema (``capabilities = {"router": "trainable"}``), and ``prunekit validate`` refuses
a recipe that pairs them wrongly — before any model is loaded. When the component is built, the
object is checked against the Protocol too, so a plugin that claims a shape it lacks is named.

Losses declare the :class:`~prunekit.losses.LossInputs` fields they read (``needs``) and methods
the fields each of their loss sets can fill (``loss_inputs``); the same check applies.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

    from prunekit.losses import LossInputs
    from prunekit.run import Run


@runtime_checkable
class PromptRouter(Protocol):
    """Routes prompts (text) to one of ``num_codes`` experts; nothing to train."""

    num_codes: int

    def route(self, prompts: list[str]) -> list[int]: ...


@runtime_checkable
class TrainableRouter(Protocol):
    """A ``torch.nn.Module`` routing prompt embeddings to architecture codes, trained by the method.

    ``forward(z) -> (e, codes)`` is the only read of its parameters during training (ZeRO-3 gathers
    them there): ``e`` are the predicted architecture logits of each prompt, ``codes`` the
    ``num_codes`` learnable architecture codes, both fp32. ``assign`` is the training-time code of
    each item (e.g. optimal transport), ``nearest`` the deployed one, ``route(z)`` inference.
    """

    num_codes: int
    codes: torch.Tensor

    def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]: ...

    def embed(self, z: torch.Tensor) -> torch.Tensor: ...

    def assign(self, e: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor: ...

    def nearest(self, e: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor: ...

    def route(self, z: torch.Tensor) -> torch.Tensor: ...

    def init_codes(self, e: torch.Tensor, generator: torch.Generator | None = None) -> None: ...

    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


@runtime_checkable
class Gate(Protocol):
    """Turns gate logits (…, units) into gates: relaxed while training, 0/1 when deployed."""

    def __call__(self, logits: torch.Tensor, *, training: bool) -> torch.Tensor: ...

    def hard(self, logits: torch.Tensor) -> torch.Tensor: ...

    def deployed(self, logits: torch.Tensor) -> torch.Tensor:
        """The hard mask inference uses, with a straight-through gradient to ``logits``."""
        ...


@runtime_checkable
class Budget(Protocol):
    """A resource the pruned model is charged for (MACs, latency, parameters, ...).

    ``ratio(gates)`` is differentiable (…, units) → (…): the cost of each gate vector over the dense
    model's; ``cost_of(mask)`` the absolute cost of one hard mask (None: the dense model);
    ``dense`` the dense model's cost; ``target`` the ratio the method aims at. Optionally ``files``,
    ``{artifact name: path}``: files the budget read (a latency table), copied into the run directory.
    """

    target: float
    unit: str

    @property
    def dense(self) -> float: ...

    def ratio(self, gates: torch.Tensor) -> torch.Tensor: ...

    def cost_of(self, mask: torch.Tensor | None) -> float: ...


@runtime_checkable
class Loss(Protocol):
    """``loss(inputs) -> scalar`` (already weighted). ``needs`` are the LossInputs fields it reads."""

    weight: float
    needs: frozenset[str]

    def __call__(self, inputs: LossInputs) -> torch.Tensor: ...


@runtime_checkable
class Metric(Protocol):
    """An evaluation metric (see :mod:`prunekit.metrics` for the accumulator it returns)."""

    name: str


@runtime_checkable
class Method(Protocol):
    """A pruning (or training) method.

    ``run`` executes the method's stages through ``run.stage(name, fn)`` so that ``--resume``
    skips completed ones, builds the other components with ``run.build("model")`` etc., writes
    artefacts under ``run.artifact(...)`` and returns the final metrics (also saved to
    ``metrics.json`` by the caller).
    """

    def run(self, run: Run) -> dict[str, Any]: ...


#: The shapes a component of each kind may declare in ``provides``, and the Protocol each stands for.
CAPABILITIES: dict[str, dict[str, type]] = {
    "router": {"trainable": TrainableRouter, "prompts": PromptRouter},
    "gate": {"gate": Gate},
    "budget": {"budget": Budget},
    "loss": {"loss": Loss},
}


def check_built(kind: str, name: str, obj: Any, provides: Sequence[str]) -> str | None:
    """Why a built component does not have the shapes it declared (None if it has them)."""
    for capability in provides:
        protocol = CAPABILITIES.get(kind, {}).get(capability)
        if protocol is None or isinstance(obj, protocol):
            continue
        missing = [m for m in _members(protocol) if not hasattr(obj, m)]
        return (f"{kind} {name!r} declares {capability!r} but lacks "
                f"{', '.join(missing) or 'part of ' + protocol.__name__}")
    return None


def _members(protocol: type) -> list[str]:
    import typing

    attrs = getattr(protocol, "__protocol_attrs__", None) or typing._get_protocol_attrs(protocol)  # type: ignore[attr-defined]
    return sorted(attrs)
