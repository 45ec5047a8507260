"""Which expert each training sample goes to, and each expert's architecture: ``routing.json``.

``route_to_codes`` routes every training prompt to its nearest code (a mixture of experts);
``one_expert_routing`` records a single architecture every sample uses (the baselines).
Both return the same record: counts, per-expert cost and ratio, the mean ratio, the dense cost.
"""

from __future__ import annotations

from typing import Any

from prunekit import run_files
from prunekit_plugins.stages.context import PruningContext


def write_routing(ctx: PruningContext, expert_of_sample: list[int], masks: list[list[int]]) -> None:
    ctx.run.on_main(lambda: run_files.write_routing(ctx.run, expert_of_sample, masks))


def read_routing(ctx: PruningContext) -> dict[str, Any]:
    routing = run_files.read_routing(ctx.run)
    return {"expert_of_sample": routing.expert_of_sample, "masks": routing.masks}


def route_to_codes(ctx: PruningContext, router: Any, gate: Any) -> dict[str, Any]:
    """Every encoded sample to its nearest code; each code's hard mask is an expert."""
    import torch

    experts = torch.cat([router.route(chunk) for chunk in ctx.encoded.column_chunks("z")])
    counts = torch.bincount(experts, minlength=router.num_codes).tolist()
    masks = gate.hard(router.codes.detach())
    dense = ctx.budget.dense
    costs = [ctx.budget.cost_of(m) for m in masks]
    ratios = [c / dense for c in costs]
    total = max(1, sum(counts))
    mean_ratio = sum(r * c for r, c in zip(ratios, counts)) / total
    write_routing(ctx, experts.tolist(), masks.to(torch.int8).tolist())
    ctx.run.log.info("routing: counts %s, %s ratios %s, mean %.4f (target %.2f)", counts, ctx.budget.unit,
                     [round(r, 3) for r in ratios], mean_ratio, ctx.budget.target)
    used = [r for r, c in zip(ratios, counts) if c]
    # how far the experts' budgets separate (the paper's Fig. 8-9 spread), over experts that serve prompts
    spread = max(used) - min(used) if used else 0.0
    return {"counts": counts, "macs": costs, "macs_ratio": ratios, "mean_macs_ratio": mean_ratio,
            "macs_ratio_spread": spread, "dense_macs": dense, "target": ctx.budget.target}


def one_expert_routing(ctx: PruningContext, mask: Any) -> dict[str, Any]:
    """``mask`` as the one expert every sample goes to; the same record as :func:`route_to_codes`."""
    n = len(ctx.encoded)
    write_routing(ctx, [0] * n, [mask.to(int).tolist()])
    dense, cost = ctx.budget.dense, ctx.budget.cost_of(mask)
    ctx.run.log.info("architecture: %d of %d units, %s ratio %.4f (target %.4f)",
                     int(mask.sum()), ctx.num_units, ctx.budget.unit, cost / dense, ctx.budget.target)
    return {"counts": [n], "macs": [cost], "macs_ratio": [cost / dense], "mean_macs_ratio": cost / dense,
            "dense_macs": dense, "target": float(ctx.budget.target)}
