"""The paper recipe itself, end to end on a CPU: recipes/aptp_coco_base.yaml with a small local
diffusers pipeline, synthetic COCO-format train and val data, local metric weights, and iterations
and prompts cut down; every stage runs, the evaluation included, in the recipe's bf16 and ZeRO-2."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import REPO, save_tiny_clip

pytestmark = pytest.mark.slow


def test_aptp_coco_base_runs_every_stage_on_synthetic_coco(tmp_path):
    from prunekit_plugins.datasets.synthetic_coco import write_synthetic_coco
    from safetensors.torch import save_file

    from prunekit.metrics import fid_inception
    from prunekit.recipe import load_recipe
    from prunekit.registry import get_registry
    from prunekit.runner import execute
    from prunekit.tiny import save_tiny_pipeline

    model = save_tiny_pipeline(tmp_path / "sd")
    train = write_synthetic_coco(tmp_path / "train", images=24, captions_per_image=2, resolution=32, seed=0)
    val = write_synthetic_coco(tmp_path / "val", images=10, captions_per_image=3, resolution=32, seed=1)
    torch.manual_seed(0)
    save_file(fid_inception().state_dict(), str(tmp_path / "inception.safetensors"))
    clip = save_tiny_clip(tmp_path / "clip")

    overrides = [
        f"model.path={model}", "model.device=cpu", "prompt_encoder.device=cpu",
        f"dataset.root={train['root']}", f"dataset.annotations={train['annotations']}", "dataset.resolution=32",
        f"eval.dataset.root={val['root']}", f"eval.dataset.annotations={val['annotations']}",
        "eval.dataset.resolution=32",
        f"metrics.fid.inception_weights={tmp_path / 'inception.safetensors'}",
        f"metrics.clip_score.clip_path={clip}", f"metrics.cmmd.clip_path={clip}",
        # cut down: iterations, batches, prompts, sampler steps, generation size
        "router.num_codes=2", "method.prune.warmup_iters=2", "method.prune.iters=3", "method.prune.lr_warmup=1",
        "method.prune.micro_batch=8", "method.prune.grad_accum=1", "method.finetune.iters=1",
        "method.finetune.micro_batch=4", "method.finetune.grad_accum=1", "engine.micro_batch=8",
        "eval.prompts=6", "eval.steps=2", "eval.resolution=32", "eval.batch_size=3",
        "eval.samples_per_expert=1", "method.encode.shard_size=16",
    ]
    recipe = load_recipe(REPO / "recipes" / "aptp_coco_base.yaml", overrides)
    assert recipe.data["engine"]["precision"] == "bf16" and recipe.data["engine"]["zero_stage"] == 2
    run, metrics = execute(recipe, get_registry(), output=tmp_path / "run", console_log=False)

    stages = json.loads((tmp_path / "run" / "stages.json").read_text())
    assert list(stages) == ["encode", "prune_warmup", "prune", "route", "finetune_expert_0", "finetune_expert_1",
                            "export", "evaluate"]
    assert stages["encode"]["samples"] == 48 and stages["encode"]["shards"] == 3
    evaluation = json.loads((tmp_path / "run" / "artifacts" / "evaluation.json").read_text())
    assert evaluation["prompts"] == 6 and evaluation["settings"]["dataset"]["name"] == "coco"
    for role in ("teacher", "mixture"):
        values = evaluation[role]["metrics"]
        for key in ("fid", "clip_score", "cmmd", "macs"):
            assert key in values and values[key] == values[key], (role, key, values)  # present, not NaN
        assert evaluation[role]["generation"]["metric_size"] == 256  # resized to 256 px as in the paper
    assert (tmp_path / "run" / "report.html").is_file()
    assert metrics["mixture"]["metrics"]["fid"] == evaluation["mixture"]["metrics"]["fid"]
