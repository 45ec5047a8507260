"""Post-training recipes end to end: validation, independent components, save / reload / generate."""

from __future__ import annotations

import json

import prunekit_plugins.posttrain as posttrain
import pytest
import torch
from helpers import POSTTRAIN_RECIPES, run_recipe

import prunekit.registry
from prunekit.errors import RecipeError
from prunekit.recipe import load_recipe
from prunekit.registry import Registry
from prunekit.runner import execute
from prunekit.tiny import build_tiny_pipeline

RECIPES = sorted(POSTTRAIN_RECIPES.glob("*.yaml"))


pytestmark = pytest.mark.usefixtures("single_thread")


def posttrain_registry() -> Registry:
    """Installed plugins, plus this package when its entry point is not installed yet."""
    registry = Registry()
    registry.load_entry_points()
    if registry.find("method", "sparsegpt") is None:
        registry.add_plugin(posttrain, name="posttrain_under_test")
    return registry


@pytest.fixture(scope="module")
def registry() -> Registry:
    return posttrain_registry()


@pytest.mark.parametrize("path", RECIPES, ids=[p.name for p in RECIPES])
def test_posttrain_recipes_validate(registry, path):
    data = load_recipe(path, registry=registry).data
    method = data["method"]
    assert method["name"] in ("magnitude", "wanda", "sparsegpt", "owl")
    assert (method["text_encoder"]["sparsity"], method["unet"]["sparsity"]) == (0.475, 0.35)
    if path.name.startswith("sd2_"):
        assert data["model"] == {**data["model"], "name": "diffusers_sd", "path": "stabilityai/stable-diffusion-2-1"}
    elif path.name.startswith("embedded_"):
        assert data["model"]["name"] == "embedded" and data["dataset"]["name"] == "embedded_domain"
        assert set(data["metrics"]) >= {"domain_alignment", "domain_fid"}
    else:
        assert data["model"]["name"] == "tiny_random"


def test_recipe_errors_are_reported(registry, tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text(
        "name: bad\nmodel: {name: tiny_random}\n"
        "method: {name: owl, text_encoder: {sparsity: 0.35, pattern: '2:4'}, unet: {pattern: '4:2'}}\n"
    )
    with pytest.raises(RecipeError) as err:
        load_recipe(bad, registry=registry)
    text = "\n".join(err.value.problems)
    assert "sparsity 0.35 does not match pattern 2:4 (0.5)" in text
    assert "pattern '4:2': needs 0 < N < M" in text
    bad.write_text("name: bad\nmodel: {name: tiny_random}\nmethod: {name: owl, text_encoder: {sparsity: 0.5}}\n")
    with pytest.raises(RecipeError, match="method 'owl' with base 'wanda' needs a 'dataset' section"):
        load_recipe(bad, registry=registry)
    bad.write_text("name: bad\nmodel: {name: tiny_random}\nmethod: {name: wanda}\n")
    with pytest.raises(RecipeError, match="dataset: method 'wanda' needs a 'dataset' section"):
        load_recipe(bad, registry=registry)
    bad.write_text(
        "name: bad\nmodel: {name: tiny_random}\ndataset: {name: prompts, items: [a]}\n"
        "method: {name: sparsegpt, blocksize: 6, unet: {sparsity: 0.5, pattern: '2:4'}}\n"
    )
    with pytest.raises(RecipeError, match="blocksize 6 is not a multiple of unet.pattern's group size 4"):
        load_recipe(bad, registry=registry)


def _state(module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


def test_components_are_pruned_independently(registry, tmp_path):
    dense = build_tiny_pipeline(0)
    wanda = POSTTRAIN_RECIPES / "tiny_wanda.yaml"
    _, only_unet = run_recipe(wanda, ["method.text_encoder.sparsity=0"], output=tmp_path / "u", registry=registry)
    _, only_text = run_recipe(wanda, ["method.unet.sparsity=0"], output=tmp_path / "t", registry=registry)
    _, both = run_recipe(wanda, output=tmp_path / "b", registry=registry)
    from diffusers import UNet2DConditionModel
    from transformers import CLIPTextModel

    def load(run: str, component: str):
        folder = tmp_path / run / "artifacts" / "pipeline" / component
        cls = UNet2DConditionModel if component == "unet" else CLIPTextModel
        return _state(cls.from_pretrained(folder, local_files_only=True))

    # sparsity 0 on one component leaves it bit-identical to the dense model
    assert all(torch.equal(v, _state(dense.text_encoder)[k]) for k, v in load("u", "text_encoder").items())
    assert all(torch.equal(v, _state(dense.unet)[k]) for k, v in load("t", "unet").items())
    assert only_unet["text_encoder"]["sparsity"] == 0 and only_text["unet"]["sparsity"] == 0
    # and each component's result does not depend on the other's sparsity
    unet_b, unet_u = load("b", "unet"), load("u", "unet")
    assert all(torch.equal(unet_b[k], unet_u[k]) for k in unet_b)
    text_b, text_t = load("b", "text_encoder"), load("t", "text_encoder")
    assert all(torch.equal(text_b[k], text_t[k]) for k in text_b)
    assert both["unet"]["sparsity"] == pytest.approx(0.35, abs=1e-3)
    assert both["text_encoder"]["sparsity"] == pytest.approx(0.475, abs=1e-3)


def test_pruned_pipeline_reloads_with_plain_diffusers_and_generates(registry, tmp_path, monkeypatch):
    from diffusers import StableDiffusionPipeline

    from prunekit.cli import main

    monkeypatch.setattr(prunekit.registry, "_REGISTRY", registry)  # the CLI's registry, with posttrain
    out = tmp_path / "run"
    assert main(["run", str(POSTTRAIN_RECIPES / "tiny_wanda.yaml"), "--output", str(out), "-q"]) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["method"] == "wanda"
    for component, target in (("unet", 0.35), ("text_encoder", 0.475)):
        entry = metrics[component]
        assert entry["sparsity"] == pytest.approx(target, abs=1e-3)
        assert entry["layers"] and all(abs(s - target) < 1e-3 for s in entry["layers"].values())
    pipe = StableDiffusionPipeline.from_pretrained(out / "artifacts" / "pipeline", local_files_only=True)
    reloaded = dict(pipe.unet.named_modules())
    for name, sparsity in metrics["unet"]["layers"].items():
        weight = reloaded[name].weight
        assert float((weight == 0).float().mean()) == pytest.approx(sparsity, abs=1e-6)
    pipe.set_progress_bar_config(disable=True)
    image = pipe(
        "a red circle", num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np"
    ).images
    size = pipe.unet.config.sample_size * pipe.vae_scale_factor
    assert image.shape == (1, size, size, 3) and bool((image >= 0).all() and (image <= 1).all())


def test_resume_restores_pruned_weights(registry, tmp_path):
    _, first = run_recipe(POSTTRAIN_RECIPES / "tiny_magnitude.yaml", output=tmp_path / "r", registry=registry)
    recipe = load_recipe(POSTTRAIN_RECIPES / "tiny_magnitude.yaml", registry=registry)
    run, again = execute(recipe, registry, output=tmp_path / "r", resume=True, console_log=False)
    # every stage was skipped; the metrics are measured on the restored weights, not a dense model
    assert again["unet"]["layers"] == first["unet"]["layers"]
    assert again["unet"]["sparsity"] == pytest.approx(0.35, abs=1e-3)
    assert "restored" in (tmp_path / "r" / "run.log").read_text()


@pytest.mark.parametrize("component,points", [("text_encoder", 40), ("unet", 36)])
def test_paper_sweeps_validate_every_point(registry, component, points):
    from prunekit.sweep import load_sweep

    sweep = load_sweep(POSTTRAIN_RECIPES / "sweeps" / f"sd2_{component}.yaml", registry=registry)
    assert len(sweep.points) == points
    assert {p.method for p in sweep.points} == {"magnitude", "wanda", "sparsegpt", "owl"}
    other = "unet" if component == "text_encoder" else "text_encoder"
    for point in sweep.points:
        method = point.recipe.data["method"]
        assert method[other]["sparsity"] == 0.0 and 0.1 <= method[component]["sparsity"] <= 0.7


@pytest.mark.parametrize("component", ["text_encoder", "unet"])
def test_embedded_sweeps_have_a_dense_reference_and_every_method(registry, component):
    from prunekit.sweep import load_sweep

    sweep = load_sweep(POSTTRAIN_RECIPES / "sweeps" / f"embedded_{component}.yaml", registry=registry)
    by_label: dict[str, list] = {}
    for point in sweep.points:
        by_label.setdefault(point.label.split("@")[0], []).append(point.recipe.data)
    assert set(by_label) == {"magnitude", "wanda", "sparsegpt", "owl", "dense"}
    # one dense reference per seed
    assert [(d["method"]["unet"]["sparsity"], d["method"]["text_encoder"]["sparsity"], d["seed"], d["eval"]["seed"])
            for d in by_label["dense"]] == [(0, 0, s, s) for s in range(3)]
    other = "unet" if component == "text_encoder" else "text_encoder"
    for label in ("magnitude", "wanda", "sparsegpt", "owl"):
        assert len(by_label[label]) == 6 * 3  # 6 sparsities, 3 seeds
        for data in by_label[label]:
            assert data["method"][other]["sparsity"] == 0.0 and data["method"][component]["sparsity"] > 0
            assert data["metrics"] and data["eval"]["teacher"] is False and data["eval"]["prompts"] == 32
            assert data["eval"]["seed"] == data["seed"]
            if "calibration" in data["method"]:  # the seed also draws the calibration prompts
                assert data["method"]["calibration"]["seed"] == data["seed"]
        assert {d["seed"] for d in by_label[label]} == {0, 1, 2}


def test_pruned_pipeline_is_evaluated_against_the_unpruned_teacher(registry, tmp_path):
    """With a metrics: section the pruned pipeline and the teacher are generated from the same prompts
    and noise and scored with the domain metrics; metrics.json holds both."""
    out = tmp_path / "run"
    _, metrics = run_recipe(POSTTRAIN_RECIPES / "embedded_magnitude.yaml", [
        "method.text_encoder.sparsity=0", "method.unet.sparsity=0.8", "dataset.size=32",
        "eval.prompts=8", "eval.steps=3"], output=out, registry=registry)
    model, teacher = metrics["model"], metrics["teacher"]
    assert model["path"] == "artifacts/pipeline" and model["sparsity"] == metrics["sparsity"]
    assert metrics["unet"]["sparsity"] == pytest.approx(0.8, abs=1e-3)
    assert model["generation"]["images"] == teacher["generation"]["images"] == 8
    for entry in (model, teacher):
        assert 0 <= entry["metrics"]["domain_alignment"] <= 1 and entry["metrics"]["domain_fid"] > 0
    # 80 % of the U-Net's weights gone: not the teacher's images any more
    assert model["metrics"]["domain_fid"] != teacher["metrics"]["domain_fid"]
    saved = json.loads((out / "artifacts" / "evaluation.json").read_text())
    assert saved["model"]["metrics"] == model["metrics"]


def test_metrics_without_an_eval_dataset_stop_before_pruning(registry, tmp_path):
    from prunekit.errors import MissingPathError

    recipe = load_recipe(POSTTRAIN_RECIPES / "tiny_magnitude.yaml", ["metrics={macs: {}}"], registry=registry)
    with pytest.raises(MissingPathError, match=r"^eval\.dataset: the recipe has metrics but no dataset"):
        execute(recipe, registry, output=tmp_path / "run", console_log=False)
    assert not (tmp_path / "run" / "stages.json").exists()
