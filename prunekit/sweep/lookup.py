"""Values of a run's ``metrics.json`` by dotted path: the cells of a sweep's comparison table."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from prunekit.sweep.schema import MetricColumn


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value)


def lookup(metrics: Any, path: str) -> Any:
    """The value at a dotted ``path`` of ``metrics`` (None when absent). ``*`` over a list is the
    mean of the rest of the path over its items, weighted by their ``share`` when they have one."""
    node = metrics
    parts = path.split(".")
    for i, part in enumerate(parts):
        if part == "*" and isinstance(node, list):
            rest = ".".join(parts[i + 1:])
            pairs = []
            for item in node:
                value = _number(lookup(item, rest) if rest else item)
                weight = _number(item.get("share")) if isinstance(item, Mapping) and "share" in item else 1.0
                if value is not None and weight is not None:
                    pairs.append((value, weight))
            total = sum(w for _, w in pairs)
            return sum(v * w for v, w in pairs) / total if pairs and total > 0 else None
        if isinstance(node, Mapping):
            node = node.get(part)
        elif isinstance(node, list) and re.fullmatch(r"-?\d+", part) and -len(node) <= int(part) < len(node):
            node = node[int(part)]
        else:
            return None
        if node is None:
            return None
    return node


def column_value(metrics: Mapping[str, Any] | None, column: MetricColumn) -> Any:
    if metrics is None:
        return None
    for path in column.paths:
        value = lookup(metrics, path)
        if value is not None:
            return value
    return None


def macs_ratio(metrics: Mapping[str, Any] | None) -> float | None:
    """Share-weighted MACs ratio of a run's experts; 1.0 for a run that reports none (unpruned)."""
    if metrics is None:
        return None
    if not metrics.get("experts"):
        return 1.0
    return _number(lookup(metrics, "experts.*.macs_ratio"))
