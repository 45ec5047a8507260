"""What a ``method`` plugin builds: an object that runs its stages inside a :class:`~prunekit.run.Run`."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    from prunekit.run import Run


@runtime_checkable
class Method(Protocol):
    """A pruning (or training) method.

    ``run`` executes the method's stages through ``run.stage(name, fn)`` so that ``--resume``
    skips completed ones, builds the other components with ``run.build("model")`` etc., writes
    artefacts under ``run.artifact(...)`` and returns the final metrics (also saved to
    ``metrics.json`` by the caller).
    """

    def run(self, run: Run) -> dict[str, Any]: ...
