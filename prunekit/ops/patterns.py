"""Sparsity pattern strings (torch-free: recipe validation parses them)."""

from __future__ import annotations


def parse_pattern(pattern: str) -> tuple[int, int] | None:
    """``"unstructured"`` -> None; ``"N:M"`` -> ``(N, M)``: at most N non-zeros in every M
    consecutive input weights (the 2:4 of sparse tensor cores keeps 2 of each 4)."""
    if pattern == "unstructured":
        return None
    parts = pattern.split(":")
    if len(parts) != 2 or not all(p.isdigit() for p in parts):
        raise ValueError(f"pattern {pattern!r}: expected 'unstructured' or 'N:M' such as '2:4'")
    keep, group = int(parts[0]), int(parts[1])
    if not 0 < keep < group:
        raise ValueError(f"pattern {pattern!r}: needs 0 < N < M")
    return keep, group
