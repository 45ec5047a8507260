"""Around a pruning method's stages: fail fast on missing metric weights, and after export say what
the run deployed (the runner evaluates it when the recipe asks for metrics and writes report.html)."""

from __future__ import annotations

from typing import Any


def check_metric_paths(run: Any) -> None:
    """Missing metric weights stop the run now, not after hours of training."""
    from prunekit.errors import MissingPathError
    from prunekit.evaluation import preflight_metrics

    problems = preflight_metrics(run.recipe.data, run.registry)
    if problems:
        raise MissingPathError("\n".join(problems))


def deploy_mixture(run: Any, result: dict[str, Any], *, base: Any) -> dict[str, Any]:
    """``result`` saying that the run deployed its mixture (``artifacts/mixture``): the runner then runs
    the ``evaluate`` stage when the recipe has ``metrics:`` and writes report.html (see
    :mod:`prunekit.deployable`; ``base`` is the frozen teacher pipeline, reused there)."""
    from prunekit.deployable import Deployable

    return {**result, "deployable": Deployable("mixture", base=base)}
