"""What the single-architecture baselines (``norm``, ``uni_arch``) share.

The pruned model is exported exactly like an APTP mixture with one expert (``artifacts/mixture/``:
manifest, a ``single_code`` router, a ``constant`` prompt encoder, ``experts/expert_00``), so every
pruned method is loaded, generated from and evaluated the same way. Both methods are assembled from
the stage library (:mod:`prunekit_plugins.stages`); this module holds the one-code pieces.
"""

from __future__ import annotations

from typing import Any

from prunekit_plugins.baselines.single_code import (
    ConstantPromptEncoder,
    SingleCodeRouterConfig,
    build_single_code_router,
)
from prunekit_plugins.stages import PruningContext, export_mixture, one_expert_model_entry
from prunekit_plugins.stages.finish import deploy_mixture


def single_code_router(ctx: PruningContext, init_logit: float) -> Any:
    return build_single_code_router(SingleCodeRouterConfig(init_logit=init_logit),
                                    embed_dim=ctx.embed_dim, num_units=ctx.num_units)


def deployed_sections(ctx: PruningContext, init_logit: float) -> dict[str, Any]:
    """The recipe sections the mixture manifest records to rebuild its prompt encoder and router."""
    return {"prompt_encoder": {"name": "constant", "dim": ctx.encoder.dim},
            "router": {"name": "single_code", "init_logit": init_logit}}


def export_one_expert(ctx: PruningContext, router: Any, routing: dict[str, Any], expert: dict[str, Any],
                      init_logit: float) -> dict[str, Any]:
    return export_mixture(ctx, router, routing, [expert], deployed=deployed_sections(ctx, init_logit))


def constant_prompt_encoder() -> Any:
    return ConstantPromptEncoder()


def finish(run: Any, ctx: PruningContext, result: dict[str, Any]) -> dict[str, Any]:
    """The model entry goes in before the evaluate stage and the report read the metrics."""
    return deploy_mixture(run, one_expert_model_entry(ctx, result), base=ctx.pipeline)
