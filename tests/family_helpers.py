"""Shared by tests/test_families.py (SDXL, SD3) and tests/test_families_dit.py (PixArt, Flux): the
smoke-run overrides, the stages every family completes, and the check that a mixture's routed images
are its experts' own."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

FAST = ["engine.threads=1", "model.name=diffusers_sd", "metrics.macs={}"]
# Enough router steps for the resource loss to prune (the experts then differ from the teacher).
PRUNING = ["budget.target=0.6", "method.prune.warmup_iters=30", "method.prune.lr=0.05"]
PROMPTS = ["a red square", "a blue circle on green", "a small yellow triangle"]


def stages(out: Path) -> dict[str, Any]:
    return json.loads((out / "stages.json").read_text())


def expected_stages() -> set[str]:
    return {"encode", "prune_warmup", "prune", "route", *(f"finetune_expert_{i}" for i in range(4)), "export",
            "evaluate"}


def routed_images_equal_their_expert_alone(mixture: Path, base_pipeline: str, **call: Any) -> Any:
    """Load ``mixture``, generate :data:`PROMPTS` routed (seed 0: image i from seed i) and check each
    image equals its expert's plain ``base_pipeline`` alone at the same seed; ``call``: more keywords
    for both calls (a size, a family's pipeline options). Returns the loaded mixture."""
    import torch

    from prunekit.pipeline import PromptRoutedPipeline

    pipe = PromptRoutedPipeline.from_pretrained(mixture)
    assert pipe.config["base_pipeline"] == base_pipeline
    out = pipe(PROMPTS, seed=0, num_inference_steps=2, output_type="np", **call)
    assert len(set(out.experts)) >= 1 and len(out.images) == len(PROMPTS)
    for i, (prompt, expert) in enumerate(zip(PROMPTS, out.experts)):
        alone = pipe.expert_pipeline(expert)
        assert type(alone).__name__ == base_pipeline
        image = alone(prompt, generator=torch.Generator().manual_seed(i), num_inference_steps=2,
                      output_type="np", **call).images[0]
        assert abs(image - out.images[i]).max() < 1e-5
    return pipe
