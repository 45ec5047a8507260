"""Reusable stages of structured pruning, as functions over a :class:`PruningContext`.

``prepare`` (frozen pipeline, encode, prunable U-Net, budget) → ``train_router`` (warm-up / joint)
→ ``route_to_codes`` or ``one_expert_routing`` → ``finetune_expert`` per expert → ``export_mixture``.
APTP (``prunekit_plugins.aptp``) and the baselines (``prunekit_plugins.baselines``) are assembled
from them; a new method can be too.
"""

from prunekit_plugins.stages.context import PruningContext, diffusion_batch, prepare, stage_engine_config
from prunekit_plugins.stages.expert_finetune import (
    FINETUNE_INPUTS,
    PAPER_FINETUNE_LOSSES,
    FinetuneStageConfig,
    finetune_expert,
)
from prunekit_plugins.stages.export import export_mixture, one_expert_model_entry
from prunekit_plugins.stages.router_training import PRUNE_INPUTS, PruneStageConfig, load_router, train_router
from prunekit_plugins.stages.routing import one_expert_routing, read_routing, route_to_codes

__all__ = [
    "FINETUNE_INPUTS", "PAPER_FINETUNE_LOSSES", "PRUNE_INPUTS", "FinetuneStageConfig", "PruneStageConfig",
    "PruningContext", "diffusion_batch", "export_mixture", "finetune_expert", "load_router",
    "one_expert_model_entry", "one_expert_routing", "prepare", "read_routing", "route_to_codes",
    "stage_engine_config", "train_router",
]
