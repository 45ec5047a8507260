"""The recipe's top-level ``eval:`` section (a core section, like ``engine:``): how whatever a method
deploys is generated from and scored (:mod:`prunekit.evaluation`). Kept apart from the evaluation
package so that validating a recipe imports nothing else."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal

from prunekit.config import option

SECTION = "eval"

# DDPM-family samplers (SD 1.x / 2.x, SDXL, PixArt), the flow-matching Euler sampler (SD3, Flux), or the
# pipeline's own; prunekit.model_objective refuses one that does not fit the model.
Scheduler = Literal["pndm", "ddim", "dpm_solver", "euler", "ddpm", "flow_match_euler", "pipeline"]


@dataclass
class EvalConfig:
    """The recipe's ``eval:`` section."""

    prompts: int = option(1000, ge=0, help="evaluation prompts drawn from the eval dataset (0 = all of it)")
    steps: int = option(25, ge=1, help="sampler steps (paper: 25)")
    guidance_scale: float = option(7.5, ge=0, help="classifier-free guidance (paper: 7.5)")
    scheduler: Scheduler = option("pndm", help="sampler (paper: pndm); 'pipeline' keeps the model's own; "
                                                  "flow-matching models (SD3, Flux): pipeline or flow_match_euler")
    resolution: int | None = option(None, ge=8, help="generation size in pixels (default: the model's native size)")
    resize: int | None = option(None, ge=8, help="size metrics see (default: the eval dataset's images)")
    seed: int = option(0, ge=0, help="image i is generated from seed + i")
    batch_size: int = option(8, ge=1, help="prompts per generation call")
    metric_batch: int = option(64, ge=1, help="images per metric update (metrics stream; no image set is held whole)")
    teacher: bool = option(True, help="also evaluate the unpruned model, for the teacher-vs-pruned table")
    dataset: dict[str, Any] | None = option(None, help="eval split: a dataset section (default: the recipe's dataset)")
    samples_per_expert: int = option(4, ge=0, help="images per expert in the report's sample grid")
    max_skipped_fraction: float = option(
        0.01, ge=0, le=1, help="stop when more than this share of the drawn eval rows cannot be read")


def eval_config(recipe_data: Mapping[str, Any]) -> EvalConfig:
    from prunekit.config import instantiate_schema

    return instantiate_schema(EvalConfig, recipe_data.get(SECTION) or {})


def eval_dataset_section(recipe_data: Mapping[str, Any]) -> dict[str, Any] | None:
    """The eval split: ``eval.dataset``, else the recipe's ``dataset``."""
    section = eval_config(recipe_data).dataset or recipe_data.get("dataset")
    return dict(section) if section else None
