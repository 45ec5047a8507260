"""SparseGPT (Frantar & Alistarh 2023): one-shot pruning with optimal-brain-surgeon weight updates.

For a layer ``Y = W X`` with calibration inputs ``X`` (columns = input features), the solver
removes weights column block by column block and moves each removed weight's contribution onto
the not-yet-processed columns, using the inverse Hessian ``H⁻¹`` of the layer-wise squared error
(``H = 2 X Xᵀ / n``). The mask of each block of ``blocksize`` columns is chosen adaptively from
``w² / [H⁻¹]_jj²`` once the earlier blocks' updates have been applied.
"""

from __future__ import annotations

import torch
from torch import Tensor

from prunekit.ops.masks import prune_count

_CHOLESKY_RETRIES = 6


def _inverse_hessian_cholesky(hessian: Tensor, percdamp: float) -> Tensor:
    """Upper Cholesky factor of ``(H + λI)⁻¹``; λ grows tenfold while H is not positive definite."""
    damp = percdamp * float(torch.mean(torch.diag(hessian)))
    eye = torch.eye(hessian.shape[0], dtype=hessian.dtype, device=hessian.device)
    for _ in range(_CHOLESKY_RETRIES):
        lower, info = torch.linalg.cholesky_ex(hessian + damp * eye)
        if int(info) == 0:
            inverse = torch.cholesky_inverse(lower)
            upper, info = torch.linalg.cholesky_ex(inverse, upper=True)
            if int(info) == 0:
                return upper
        damp = max(damp * 10, 1e-8)
    raise torch.linalg.LinAlgError(
        f"the calibration Hessian is not positive definite even with dampening {damp:g}; "
        "use more calibration data or a larger percdamp"
    )


def sparsegpt_prune(
    weight: Tensor,
    hessian: Tensor,
    sparsity: float,
    *,
    prune_n: int = 0,
    prune_m: int = 0,
    blocksize: int = 128,
    percdamp: float = 0.01,
) -> Tensor:
    """Prune ``weight`` with SparseGPT and return the pruned (and updated) weight.

    ``weight`` is ``(out, columns)`` or a conv weight ``(out, in, kh, kw)`` whose columns are the
    unfolded inputs (``in·kh·kw``, the order of ``weight.reshape(out, -1)``); ``hessian`` is
    ``(columns, columns)``, e.g. ``2 X Xᵀ / n``. Unstructured: exactly
    ``prune_count(numel, sparsity)`` weights become zero, chosen per block of ``blocksize``
    columns. ``prune_n``/``prune_m`` > 0 selects N:M instead — ``prune_n`` zeros in every
    ``prune_m`` consecutive columns of each row (``sparsity`` is then unused). ``percdamp`` adds
    that fraction of the mean Hessian diagonal to the diagonal. Computation is float32 on the
    Hessian's device; the result has the weight's shape, dtype and device.
    """
    if not 0 <= sparsity < 1:
        raise ValueError(f"sparsity must be in [0, 1), got {sparsity}")
    if (prune_n or prune_m) and not 0 < prune_n < prune_m:
        raise ValueError(f"N:M needs 0 < prune_n < prune_m, got {prune_n}:{prune_m}")
    shape, dtype, device = weight.shape, weight.dtype, weight.device
    W = weight.detach().reshape(shape[0], -1).to(hessian.device, torch.float32).clone()
    rows, cols = W.shape
    if hessian.shape != (cols, cols):
        raise ValueError(f"hessian of shape {tuple(hessian.shape)} for a weight with {cols} columns")
    if prune_m and (cols % prune_m or blocksize % prune_m):
        raise ValueError(f"{cols} columns / blocksize {blocksize} do not split into groups of {prune_m}")

    H = hessian.detach().to(torch.float32).clone()
    # inputs that are always zero: free to prune, and H needs a non-zero diagonal there
    dead = torch.diag(H) == 0
    H[dead, dead] = 1.0
    Hinv = _inverse_hessian_cholesky(H, percdamp)

    for i1 in range(0, cols, blocksize):
        i2 = min(i1 + blocksize, cols)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        diag1 = torch.diag(Hinv1).reshape(1, -1)

        if prune_n == 0:
            # cumulative rounding keeps the layer total exact across blocks
            k = prune_count(rows * i2, sparsity) - prune_count(rows * i1, sparsity)
            scores = W1**2 / diag1**2
            scores[:, dead[i1:i2]] = -1.0
            mask1 = torch.zeros(rows * count, dtype=torch.bool, device=W.device)
            if k > 0:
                mask1[torch.topk(scores.reshape(-1), k, largest=False).indices] = True
            mask1 = mask1.reshape(rows, count)
        else:
            mask1 = torch.zeros_like(W1, dtype=torch.bool)

        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if prune_n and i % prune_m == 0:
                scores = W1[:, i : i + prune_m] ** 2 / diag1[:, i : i + prune_m] ** 2
                scores[:, dead[i1 + i : i1 + i + prune_m]] = -1.0
                mask1.scatter_(1, i + torch.topk(scores, prune_n, dim=1, largest=False).indices, True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err = (w - q) / d
            W1[:, i:] -= err.unsqueeze(1) @ Hinv1[i, i:].unsqueeze(0)
            Err1[:, i] = err

        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1 @ Hinv[i1:i2, i2:]
    return W.reshape(shape).to(device=device, dtype=dtype)
