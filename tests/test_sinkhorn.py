"""prunekit.ops.sinkhorn: marginals, convergence to the entropic OT plan, balance."""

from __future__ import annotations

import torch

from prunekit.ops import sinkhorn


def _entropic_plan(scores: torch.Tensor, eps: float, iters: int = 5000) -> torch.Tensor:
    # Reference: log-domain Sinkhorn to convergence with marginals 1/B (rows) and 1/N (cols), scaled by B.
    b, n = scores.shape
    log_k = scores.double() / eps
    f = torch.zeros(b, dtype=torch.float64)
    g = torch.zeros(n, dtype=torch.float64)
    for _ in range(iters):
        f = -torch.logsumexp(log_k + g[None, :], dim=1) - torch.log(torch.tensor(float(b)))
        g = -torch.logsumexp(log_k + f[:, None], dim=0) - torch.log(torch.tensor(float(n)))
    return (torch.exp(log_k + f[:, None] + g[None, :]) * b).float()


def test_rows_sum_to_one_and_columns_to_b_over_n():
    torch.manual_seed(0)
    scores = torch.nn.functional.normalize(torch.randn(32, 64), dim=1) @ torch.nn.functional.normalize(
        torch.randn(8, 64), dim=1
    ).T
    q = sinkhorn(scores, eps=0.05, n_iters=3)
    assert q.shape == (32, 8) and (q >= 0).all()
    torch.testing.assert_close(q.sum(1), torch.ones(32))
    q50 = sinkhorn(scores, eps=0.05, n_iters=200)
    torch.testing.assert_close(q50.sum(0), torch.full((8,), 4.0), rtol=1e-3, atol=1e-3)


def test_converges_to_the_entropic_plan():
    torch.manual_seed(1)
    scores = torch.rand(12, 4)
    reference = _entropic_plan(scores, eps=0.1)
    errors = [float((sinkhorn(scores, eps=0.1, n_iters=k) - reference).abs().max()) for k in (1, 3, 10, 100)]
    assert errors[-1] < 1e-4
    assert errors[0] > errors[1] > errors[2] > errors[3]


def test_equipartition_balances_a_collapsed_batch():
    # every item prefers code 0; plain argmax collapses, Sinkhorn spreads them evenly
    torch.manual_seed(2)
    scores = torch.full((16, 4), 0.1) + 0.01 * torch.rand(16, 4)
    scores[:, 0] += 0.5
    assert scores.argmax(1).bincount(minlength=4).tolist() == [16, 0, 0, 0]
    q = sinkhorn(scores, eps=0.05, n_iters=50)
    torch.testing.assert_close(q.sum(0), torch.full((4,), 4.0), rtol=1e-3, atol=1e-3)
    assert (q.argmax(1).bincount(minlength=4) >= 2).all()


def test_stable_for_small_eps_and_large_scores():
    q = sinkhorn(torch.tensor([[50.0, -50.0], [49.0, -50.0]]), eps=0.01, n_iters=3)
    assert torch.isfinite(q).all()
