"""Gate plugins: deterministic masks, and the straight-through gates a budget is charged for."""

from __future__ import annotations

import pytest
import torch

from prunekit.registry import get_registry


@pytest.mark.parametrize("name", ["gumbel_sigmoid", "hard_concrete"])
def test_deployed_gates_are_the_hard_mask_with_the_keep_probability_gradient(name):
    groups = [torch.tensor([0, 1, 2]), torch.tensor([3, 4])]
    gate = get_registry().build("gate", {"name": name}, groups=groups)
    logits = torch.tensor([[0.5, -1.0, 2.0, -0.3, -2.0]], requires_grad=True)
    deployed = gate.deployed(logits)
    # forward: exactly the exported mask (the all-off group 3-4 keeps its best unit, 3)
    assert deployed.tolist() == [[1.0, 0.0, 1.0, 1.0, 0.0]]
    assert torch.equal(deployed.detach(), gate.hard(logits.detach()))
    weights = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0])
    (deployed * weights).sum().backward()
    s = torch.sigmoid(logits.detach())
    assert torch.allclose(logits.grad, weights * s * (1 - s))


def test_sampled_gates_are_noisy_and_deployed_ones_are_not():
    gate = get_registry().build("gate", {"name": "gumbel_sigmoid"}, groups=[])
    logits = torch.full((1000, 4), 0.5)
    sampled = gate(logits, training=True)
    # a logit of 0.5 keeps its unit with probability sigmoid(0.5) under the logistic noise ...
    assert abs(float((sampled > 0.5).float().mean()) - float(torch.sigmoid(torch.tensor(0.5)))) < 0.03
    # ... while the architecture that is exported keeps it always
    assert torch.equal(gate.deployed(logits), torch.ones_like(logits))
