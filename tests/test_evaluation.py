"""Generation for evaluation and the metric runner, on a tiny prompt-routed pipeline built in code."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from helpers import SMOKE, TINY_RECIPES, run_recipe, save_tiny_clip

from prunekit.errors import MissingPathError, PluginError
from prunekit.evaluation import (
    EvalBatch,
    EvalConfig,
    evaluate,
    expert_pipeline,
    generate,
    load_eval_data,
    select_indices,
    with_scheduler,
)
from prunekit.registry import get_registry

CONFIG = EvalConfig(steps=2, resolution=16, batch_size=3, seed=5)
PROMPTS = ["a red circle", "a large green square on a table", "blue", "a small yellow triangle near a tree",
           "an orange square", "two purple circles next to each other"]


pytestmark = pytest.mark.usefixtures("single_thread")


class WordCountEncoder:
    def encode(self, prompts):
        return torch.tensor([[float(len(p.split()))] for p in prompts])


class LongPromptRouter:
    """Expert 1 for prompts of more than three words, else expert 0."""

    def route(self, z):
        return (z[:, 0] > 3).long()


@pytest.fixture(scope="module")
def routed():
    from prunekit.pipeline import PromptRoutedPipeline
    from prunekit.tiny import build_tiny_pipeline
    from prunekit.unet import make_prunable, physically_prune

    base = build_tiny_pipeline(0)
    base.set_progress_bar_config(disable=True)
    prunable = make_prunable(base.unet)
    g = torch.Generator().manual_seed(0)
    masks = [torch.rand(prunable.num_units, generator=g) > p for p in (0.6, 0.2)]
    experts = [physically_prune(prunable, m).eval() for m in masks]
    prunable.restore()
    return PromptRoutedPipeline.from_parts(base, WordCountEncoder(), LongPromptRouter(), experts)


def test_generate_keeps_input_order_and_each_image_is_its_expert_alone(routed):
    out = generate(routed, PROMPTS, CONFIG)
    assert out.experts == [0, 1, 0, 1, 0, 1]
    assert out.images.dtype == torch.uint8 and out.images.shape == (6, 3, 16, 16)
    pndm = with_scheduler(routed, "pndm")
    for i, prompt in enumerate(PROMPTS):
        alone = expert_pipeline(pndm, out.experts[i])(
            [prompt], generator=[torch.Generator().manual_seed(CONFIG.seed + i)], num_inference_steps=2,
            guidance_scale=7.5, height=16, width=16, output_type="np").images[0]
        expected = np.clip(np.round(alone * 255), 0, 255).astype(np.uint8).transpose(2, 0, 1)
        assert np.abs(out.images[i].numpy().astype(int) - expected.astype(int)).max() <= 1, i
    # the teacher alone, same seeds: a different network gives different images
    teacher = generate(routed.teacher, PROMPTS[:2], CONFIG)
    assert teacher.experts is None and not torch.equal(teacher.images, out.images[:2])


def test_with_scheduler_leaves_the_given_pipeline_alone(routed):
    from diffusers import DDPMScheduler, PNDMScheduler

    swapped = with_scheduler(routed, "pndm")
    assert type(routed.scheduler) is DDPMScheduler
    assert type(swapped.scheduler) is PNDMScheduler and swapped.scheduler.config.skip_prk_steps
    assert type(swapped.expert_pipeline(0).scheduler) is PNDMScheduler
    assert swapped.experts[1] is routed.experts[1] and swapped.vae is routed.vae
    resized = generate(routed, PROMPTS[:2], EvalConfig(steps=1, resolution=16, resize=24))
    assert resized.images.shape == (2, 3, 24, 24) and (resized.height, resized.width) == (16, 16)


class Recorder:
    def __init__(self, key, per_expert=True):
        self.key, self.per_expert, self.calls = key, per_expert, []

    def __call__(self, batch: EvalBatch):
        self.calls.append(batch)
        return {self.key: float(batch.images.float().mean()), f"{self.key}_n": len(batch.prompts)}


def test_evaluate_runs_every_metric_on_the_mixture_and_on_each_expert(routed):
    from prunekit_plugins.datasets.shapes import Shapes, ShapesConfig

    shapes = Shapes(ShapesConfig(size=6, resolution=32))
    real = torch.stack([torch.from_numpy(shapes.image(i)).permute(2, 0, 1) for i in range(6)])
    quality, whole = Recorder("quality"), Recorder("whole", per_expert=False)
    result = evaluate(routed, PROMPTS, {"quality": quality, "whole": whole}, CONFIG, real_images=real)
    assert len(whole.calls) == 1 and len(quality.calls) == 3  # mixture, then experts 0 and 1
    batch = quality.calls[0]
    assert batch.prompts == PROMPTS and batch.extra["experts"] == [0, 1, 0, 1, 0, 1]
    assert batch.extra["role"] == "mixture" and batch.images.shape == (6, 3, 32, 32)  # resized to the real size
    assert torch.equal(batch.real_images, real)
    expert1 = quality.calls[2]
    assert expert1.prompts == PROMPTS[1::2] and expert1.extra["expert"] == 1
    assert torch.equal(expert1.images, batch.images[1::2]) and torch.equal(expert1.real_images, real[1::2])
    assert result["metrics"]["quality_n"] == 6 and result["metrics"]["whole_n"] == 6
    assert [e["images"] for e in result["experts"]] == [3, 3]
    assert result["experts"][1]["metrics"] == {"quality": pytest.approx(float(expert1.images.float().mean())),
                                               "quality_n": 3}
    with pytest.raises(PluginError, match="both report 'quality'"):
        evaluate(routed.teacher, PROMPTS[:2], {"a": quality, "b": Recorder("quality")}, CONFIG)


def test_macs_and_latency_plugins_measure_teacher_experts_and_mixture(routed):
    from prunekit.unet import measure_macs

    registry = get_registry()
    macs = registry.build("metric", {"name": "macs"})
    latency = registry.build("metric", {"name": "latency", "repeats": 1, "warmup": 0, "steps": 1})
    result = evaluate(routed, PROMPTS[:3], {"macs": macs, "latency": latency}, CONFIG)["metrics"]
    per_expert = [measure_macs(e, height=8, width=8, text_len=32) for e in routed.experts]
    dense = measure_macs(routed.teacher.unet, height=8, width=8, text_len=32)
    assert per_expert[0] < per_expert[1] < dense
    assert result["macs_teacher"] == dense and result["macs_expert_01"] == per_expert[1]
    assert result["macs"] == pytest.approx((2 * per_expert[0] + per_expert[1]) / 3)  # routed 0, 1, 0
    assert result["macs_ratio"] == pytest.approx(result["macs"] / dense)
    for key in ("latency_s", "latency_teacher_s", "latency_expert_00_s", "latency_expert_01_s"):
        assert result[key] > 0
    assert result["latency_device"].startswith("cpu")


def test_eval_data_comes_from_the_dataset_rows_as_uint8():
    from prunekit_plugins.datasets.shapes import Shapes, ShapesConfig

    shapes = Shapes(ShapesConfig(size=50, resolution=16))
    rows = select_indices(50, 5, seed=1)
    assert rows == sorted(rows) and len(set(rows)) == 5 and rows != list(range(5))
    assert select_indices(50, 0, 1) == list(range(50)) and select_indices(5, 9, 1) == list(range(5))
    prompts, real, attributes = load_eval_data(shapes, rows)
    assert prompts == [shapes.prompts[i] for i in rows] and attributes is None
    assert torch.equal(real, torch.stack([torch.from_numpy(shapes.image(i)).permute(2, 0, 1) for i in rows]))


def test_a_run_with_unset_metric_weights_stops_before_any_stage(tmp_path):
    from prunekit.recipe import load_recipe
    from prunekit.runner import execute

    recipe = load_recipe(SMOKE, ["metrics.fid={}", "metrics.macs={}"])
    with pytest.raises(MissingPathError) as err:
        execute(recipe, get_registry(), output=tmp_path / "run", console_log=False)
    assert str(err.value).splitlines() == [
        "metrics.fid.inception_weights is not set: FID needs the FID Inception weights; "
        "set metrics.fid.inception_weights=FILE"]
    assert not (tmp_path / "run" / "stages.json").exists()


def test_dense_finetune_evaluates_its_saved_pipeline_against_the_teacher(tmp_path):
    """The dense reference row is scored like the pruned runs: the saved fine-tuned pipeline and the
    untouched teacher, same prompts, noise and metrics."""
    run, metrics = run_recipe(TINY_RECIPES / "dense_embedded.yaml", [
        "method.steps=2", "method.lr=1.0e-3", "dataset.size=32", "eval.prompts=8", "eval.steps=3",
        "metrics.latency=null", "engine.checkpoint_every=2"], output=tmp_path / "run")
    model, teacher = metrics["model"], metrics["teacher"]
    assert model["macs_ratio"] == 1.0 and model["metrics"]["macs_ratio"] == pytest.approx(1.0)
    assert model["generation"]["images"] == teacher["generation"]["images"] == 8
    assert set(model["metrics"]) >= {"domain_alignment", "domain_fid"}
    # the fine-tuned weights were evaluated, not the teacher a second time
    assert model["metrics"]["domain_fid"] != teacher["metrics"]["domain_fid"]
    assert json.loads((tmp_path / "run" / "metrics.json").read_text())["model"]["metrics"] == model["metrics"]


def test_killed_evaluation_resumes_without_regenerating_images(tmp_path, routed):
    from prunekit.eval_images import generate_to_folder
    from prunekit.evaluation import _batch_caller

    inner, _ = _batch_caller(routed, CONFIG)
    calls: list[list[str]] = []

    def counting(chunk, seeds, kill_at=None):
        if kill_at is not None and len(calls) == kill_at:
            raise KeyboardInterrupt
        calls.append(chunk)
        return inner(chunk, seeds)

    full, experts, _ = generate_to_folder(counting, PROMPTS, tmp_path / "full", batch_size=2, seed=5)
    assert len(calls) == 3 and experts == routed.route(PROMPTS)
    calls.clear()
    with pytest.raises(KeyboardInterrupt):
        generate_to_folder(lambda c, s: counting(c, s, kill_at=2), PROMPTS, tmp_path / "killed", batch_size=2, seed=5)
    assert sorted(p.name for p in (tmp_path / "killed").glob("*.png")) == [f"{i:06d}.png" for i in range(4)]
    calls.clear()
    resumed, experts_r, _ = generate_to_folder(counting, PROMPTS, tmp_path / "killed", batch_size=2, seed=5)
    assert calls == [PROMPTS[4:6]]  # only the batch that was not on disk
    assert experts_r == experts
    assert torch.equal(full.take(range(6)), resumed.take(range(6)))
    # The images on disk are the ones in-memory generation gives (same seeds per prompt).
    in_memory = generate(routed, PROMPTS, CONFIG).images
    assert torch.equal(full.take(range(6)), in_memory)


def test_streamed_metrics_equal_whole_batch_metrics(tmp_path, routed, monkeypatch):
    """FID/KID/CLIP score/CMMD fed 2 images at a time give what they give on all images at once, and the
    folder path scores what the in-memory path scores."""
    from safetensors.torch import save_file

    import prunekit.metrics as core_metrics
    from prunekit.metrics import fid_inception

    torch.manual_seed(0)
    save_file(fid_inception().state_dict(), str(tmp_path / "inception.safetensors"))
    original = core_metrics.load_fid_inception

    def small_inception(*args, **kwargs):  # InceptionV3 at its smallest input: same path, 1/16 of the cost
        model = original(*args, **kwargs)
        model.input_size = 75
        return model

    monkeypatch.setattr(core_metrics, "load_fid_inception", small_inception)
    clip = save_tiny_clip(tmp_path / "clip")
    registry = get_registry()
    metrics = {"fid": registry.build("metric", {"name": "fid", "inception_weights": str(tmp_path / "inception.safetensors")}),
               "kid": registry.build("metric", {"name": "kid", "inception_weights": str(tmp_path / "inception.safetensors"),
                                                "subsets": 3, "subset_size": 4}),
               "clip_score": registry.build("metric", {"name": "clip_score", "clip_path": str(clip)}),
               "cmmd": registry.build("metric", {"name": "cmmd", "clip_path": str(clip)})}
    shapes = registry.build("dataset", {"name": "shapes", "size": 6, "resolution": 16, "seed": 3})
    real = torch.stack([torch.from_numpy(shapes.image(i)).permute(2, 0, 1) for i in range(6)])
    from dataclasses import replace

    whole = evaluate(routed, PROMPTS, metrics, replace(CONFIG, metric_batch=64), real_images=real)
    streamed = evaluate(routed, PROMPTS, metrics, replace(CONFIG, metric_batch=2), real_images=real,
                        folder=tmp_path / "images")
    assert sorted(p.name for p in (tmp_path / "images" / "mixture").glob("*.png")) == [f"{i:06d}.png" for i in range(6)]
    for key in ("fid", "clip_score", "cmmd"):
        assert streamed["metrics"][key] == pytest.approx(whole["metrics"][key], rel=1e-4, abs=1e-6), key
    assert np.isfinite(streamed["metrics"]["kid"])
    for a, b in zip(whole["experts"], streamed["experts"]):
        assert a["images"] == b["images"]
        for key, value in a["metrics"].items():
            if key != "kid" and key != "kid_std":
                assert b["metrics"][key] == pytest.approx(value, rel=1e-4, abs=1e-6), (a["expert"], key)
