"""The report's statistics: bootstrap confidence intervals over per-image scores, and the table of
evaluation prompts per category routed to each expert.

Intervals are percentile bootstraps of the mean (:data:`RESAMPLES` resamples, :data:`LEVEL`, a fixed
:data:`SEED`, so a report rebuilt from the same run shows the same numbers). Teacher and mixture are
scored on the same prompts from the same seeds, so their difference is bootstrapped paired: image
``i`` of both is resampled together.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

RESAMPLES = 1000
LEVEL = 0.95
SEED = 0


def _finite(values: Sequence[Any]) -> list[float]:
    return [float(v) for v in values if isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)]


def bootstrap_ci(values: Sequence[float], *, resamples: int = RESAMPLES, level: float = LEVEL,
                 seed: int = SEED) -> tuple[float, float] | None:
    """Percentile bootstrap interval of the mean of ``values`` (None, NaN dropped); None with fewer than
    two values. The same values and seed always give the same interval."""
    import numpy as np

    data = np.asarray(_finite(values), dtype=np.float64)
    if len(data) < 2:
        return None
    if not 0 < level < 1:
        raise ValueError(f"level {level} is not in (0, 1)")
    rng = np.random.default_rng(seed)
    means = data[rng.integers(0, len(data), size=(resamples, len(data)))].mean(axis=1)
    tail = (1 - level) / 2 * 100
    low, high = np.percentile(means, [tail, 100 - tail])
    return float(low), float(high)


def summary(values: Sequence[Any], **kwargs: Any) -> dict[str, Any] | None:
    """``{"mean", "low", "high", "n"}`` of the finite ``values`` (low/high None with fewer than two);
    None when there is no finite value."""
    data = _finite(values)
    if not data:
        return None
    interval = bootstrap_ci(data, **kwargs)
    return {"mean": sum(data) / len(data), "low": interval[0] if interval else None,
            "high": interval[1] if interval else None, "n": len(data)}


def paired_difference(a: Sequence[Any], b: Sequence[Any], **kwargs: Any) -> dict[str, Any] | None:
    """:func:`summary` of ``b[i] - a[i]`` over the images where both scores exist."""
    if len(a) != len(b):
        return None
    return summary([y - x for x, y in zip(a, b) if _finite([x]) and _finite([y])], **kwargs)


def metric_intervals(evaluation: Mapping[str, Any], *, resamples: int = RESAMPLES, level: float = LEVEL,
                     seed: int = SEED) -> dict[str, Any]:
    """Bootstrap intervals of every metric with per-image scores in an evaluation result
    (``artifacts/evaluation.json``): per metric key, ``teacher``, ``mixture`` (or ``model``) and
    ``difference`` (pruned − teacher, paired), and ``experts`` (per expert of a mixture, from the
    images routed to it). Empty when no metric kept per-image scores."""
    opts = dict(resamples=resamples, level=level, seed=seed)
    pruned_role = "mixture" if "mixture" in evaluation else "model"
    teacher = ((evaluation.get("teacher") or {}).get("per_image") or {}).get("scores", {})
    pruned_images = (evaluation.get(pruned_role) or {}).get("per_image") or {}
    pruned = pruned_images.get("scores", {})
    experts = pruned_images.get("experts")
    out: dict[str, Any] = {}
    for key in dict.fromkeys([*teacher, *pruned]):
        entry: dict[str, Any] = {}
        if key in teacher and (s := summary(teacher[key], **opts)):
            entry["teacher"] = s
        if key in pruned and (s := summary(pruned[key], **opts)):
            entry[pruned_role] = s
        if key in teacher and key in pruned and (d := paired_difference(teacher[key], pruned[key], **opts)):
            entry["difference"] = d
        if key in pruned and experts is not None and len(experts) == len(pruned[key]):
            per_expert = {}
            for e in sorted(set(experts)):
                if s := summary([v for v, x in zip(pruned[key], experts) if x == e], **opts):
                    per_expert[str(e)] = s
            if per_expert:
                entry["experts"] = per_expert
        if entry:
            out[key] = entry
    return {"resamples": resamples, "level": level, "seed": seed, "role": pruned_role, "metrics": out} if out else {}


def routing_table(metrics: Mapping[str, Any], n_experts: int) -> dict[str, Any] | None:
    """Evaluation prompts of each category routed to each expert, from ``metrics.json``
    (``mixture.generation.experts_by_category``): ``{"categories", "counts" (rows: categories, columns:
    experts), "totals" (per expert), "by_category": bool}``. Without categories (the eval dataset gives
    none), one row ``all prompts`` from the experts' ``eval_images``; None without an evaluation."""
    table = ((metrics.get("mixture") or {}).get("generation") or {}).get("experts_by_category")
    if table:
        categories = list(table)
        counts = [[int(c) for c in table[k]] + [0] * (n_experts - len(table[k])) for k in categories]
        by_category = True
    else:
        entries = {int(e["expert"]): e for e in metrics.get("experts", []) if "eval_images" in e}
        if not entries:
            return None
        categories = ["all prompts"]
        counts = [[int(entries.get(e, {}).get("eval_images", 0)) for e in range(n_experts)]]
        by_category = False
    totals = [sum(row[e] for row in counts) for e in range(n_experts)]
    return {"categories": categories, "counts": counts, "totals": totals, "by_category": by_category}
