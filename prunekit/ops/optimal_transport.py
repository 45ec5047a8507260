"""Sinkhorn–Knopp with equipartition (Cuturi 2013; the SwAV/APTP variant), in the log domain."""

from __future__ import annotations

import math

import torch


def _world() -> int:
    import torch.distributed as dist

    return dist.get_world_size() if dist.is_available() and dist.is_initialized() else 1


def _logsumexp(x: torch.Tensor, dim: int | None, distributed: bool) -> torch.Tensor:
    """logsumexp over ``dim`` (all dims if None) and, when distributed, over every rank's batch."""
    if not distributed:
        return torch.logsumexp(x, dim=dim, keepdim=True) if dim is not None else torch.logsumexp(x.flatten(), 0)
    import torch.distributed as dist

    peak = x.amax(dim=dim, keepdim=True) if dim is not None else x.max()
    dist.all_reduce(peak, op=dist.ReduceOp.MAX)
    total = torch.exp(x - peak).sum(dim=dim, keepdim=True) if dim is not None else torch.exp(x - peak).sum()
    dist.all_reduce(total)
    return peak + torch.log(total)


@torch.no_grad()
def sinkhorn(scores: torch.Tensor, eps: float = 0.05, n_iters: int = 3, *, distributed: bool = False) -> torch.Tensor:
    """Soft assignment of ``B`` items to ``N`` codes maximising ``<Q, scores> + eps·H(Q)`` under
    equipartition.

    ``scores`` is ``(B, N)`` (e.g. cosine similarities). Returns ``Q`` of shape ``(B, N)`` whose
    rows sum to 1 and whose columns sum to ``B/N`` — rows exactly, columns in the limit of
    ``n_iters`` (each iteration projects onto the code marginal, then the item marginal). With
    ``distributed=True`` the code marginals are all-reduced across ranks, so the equipartition
    holds over the global batch. Computed in the log domain: small ``eps`` cannot underflow.
    """
    if scores.ndim != 2:
        raise ValueError(f"scores must be (batch, codes), got shape {tuple(scores.shape)}")
    if eps <= 0:
        raise ValueError("eps must be positive")
    distributed = distributed and _world() > 1
    n_codes = scores.shape[1]
    batch = scores.shape[0] * (_world() if distributed else 1)
    log_q = scores.detach().double().T / eps  # (N, B)
    log_q = log_q - _logsumexp(log_q, None, distributed)
    for _ in range(n_iters):
        log_q = log_q - _logsumexp(log_q, 1, distributed) - math.log(n_codes)
        log_q = log_q - torch.logsumexp(log_q, dim=0, keepdim=True) - math.log(batch)
    return (torch.exp(log_q) * batch).T.to(scores.dtype if scores.is_floating_point() else torch.float32)
