"""Small numeric kernels shared by plugins (mechanisms, not methods).

Submodules are imported on first use so that ``import prunekit.ops`` stays cheap.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "sinkhorn": "prunekit.ops.optimal_transport",
    "sparsegpt_prune": "prunekit.ops.sparsegpt",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'prunekit.ops' has no attribute {name!r}")
