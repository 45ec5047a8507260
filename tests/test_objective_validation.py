"""``prunekit validate`` / ``run`` refuse a sampler or a denoising loss that contradicts the model's
prediction type (prunekit.model_objective): DDPM-family samplers, an epsilon / v target or Min-SNR
weighting on a flow-matching model (SD3), the flow-matching sampler or target on a DDPM-family U-Net
(SDXL). The models are tiny family pipelines saved as local folders (read from their config files,
never loaded); hub ids are checked from the published table or this machine's Hugging Face cache."""

from __future__ import annotations

import json
import shutil

import pytest
from helpers import REPO, SMOKE, run_cli

from prunekit.cli import main
from prunekit.errors import RecipeError
from prunekit.recipe import load_recipe

DIFFUSERS = ["model.name=diffusers_sd"]


def _real_model_recipes():
    """Shipped recipes (those `prunekit validate --no-data` checks in CI) that load a diffusers model."""
    paths = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if "sweeps" not in p.parts)
    return [p for p in paths if (load_recipe(p, model_files=False).data.get("model") or {}).get("name") == "diffusers_sd"]


REAL_MODEL_RECIPES = _real_model_recipes()


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    """Tiny SD3 (flow matching), SDXL (epsilon) and SDXL with a v-prediction scheduler config."""
    from prunekit.tiny import save_tiny_family

    root = tmp_path_factory.mktemp("objective")
    out = {family: save_tiny_family(family, root / family) for family in ("sdxl", "sd3")}
    out["sdxl_v"] = shutil.copytree(out["sdxl"], root / "sdxl_v")
    config_file = out["sdxl_v"] / "scheduler" / "scheduler_config.json"
    config = json.loads(config_file.read_text())
    config["prediction_type"] = "v_prediction"
    config_file.write_text(json.dumps(config))
    return out


def validate(capsys, *args: str) -> tuple[int, list[str]]:
    code = main(["validate", str(SMOKE), *args])
    return code, capsys.readouterr().err.strip().splitlines()


def one_error(lines: list[str], key: str) -> str:
    errors = [line for line in lines if line.startswith("error: ")]
    assert len(errors) == 1, lines
    assert f": {key}: " in errors[0]
    return errors[0]


# -- flow matching (SD3) -----------------------------------------------------------------------------

def test_ddpm_samplers_on_a_flow_matching_folder_are_refused(folders, capsys):
    sd3 = str(folders["sd3"])
    for sampler in ("pndm", "ddim", "dpm_solver", "euler", "ddpm"):
        code, lines = validate(capsys, *DIFFUSERS, f"model.path={sd3}", f"eval.scheduler={sampler}")
        assert code == 2
        line = one_error(lines, "eval.scheduler")
        assert f"'{sampler}' is a DDPM-family sampler" in line and sd3 in line
        assert "StableDiffusion3Pipeline" in line and "flow matching" in line
        assert "set eval.scheduler=pipeline" in line and "flow_match_euler" in line
    # the smoke recipe leaves the sampler at its default, pndm
    code, lines = validate(capsys, *DIFFUSERS, f"model.path={sd3}")
    assert code == 2 and "'pndm' (the default)" in one_error(lines, "eval.scheduler")
    for sampler in ("pipeline", "flow_match_euler"):
        assert validate(capsys, *DIFFUSERS, f"model.path={sd3}", f"eval.scheduler={sampler}")[0] == 0


@pytest.mark.parametrize("where", ["losses.ddpm", "method.finetune.losses.ddpm"])
def test_epsilon_or_v_targets_and_min_snr_on_a_flow_matching_folder_are_refused(folders, capsys, where):
    model = [*DIFFUSERS, f"model.path={folders['sd3']}", "eval.scheduler=pipeline"]
    if where.startswith("method."):  # the APTP default fine-tuning losses, written out
        model.append("method.finetune.losses={ddpm: {weight: 1.0e-4}, distill_output: {weight: 1.0}}")
    for target in ("epsilon", "v_prediction", "sample"):
        code, lines = validate(capsys, *model, f"{where}.prediction_type={target}")
        assert code == 2
        line = one_error(lines, f"{where}.prediction_type")
        assert f"'{target}' does not match model {folders['sd3']}" in line and "flow matching" in line
        assert f"set {where}.prediction_type=auto (or flow_matching)" in line
    code, lines = validate(capsys, *model, f"{where}.snr_gamma=5.0")
    assert code == 2
    assert f"set {where}.snr_gamma=null" in one_error(lines, f"{where}.snr_gamma")
    for target in ("auto", "flow_matching"):
        assert validate(capsys, *model, f"{where}.prediction_type={target}")[0] == 0


# -- DDPM-family U-Nets (SDXL, epsilon and v) ----------------------------------------------------------

def test_flow_matching_sampler_and_target_on_a_ddpm_unet_are_refused(folders, capsys):
    sdxl = str(folders["sdxl"])
    code, lines = validate(capsys, *DIFFUSERS, f"model.path={sdxl}", "eval.scheduler=flow_match_euler")
    assert code == 2
    line = one_error(lines, "eval.scheduler")
    assert "'flow_match_euler' is a flow-matching sampler" in line and sdxl in line
    assert "StableDiffusionXLPipeline" in line and "epsilon" in line and "set eval.scheduler=pipeline" in line
    code, lines = validate(capsys, *DIFFUSERS, f"model.path={sdxl}", "losses.ddpm.prediction_type=flow_matching")
    assert code == 2
    assert "set losses.ddpm.prediction_type=auto (or epsilon)" in one_error(lines, "losses.ddpm.prediction_type")
    # Min-SNR and every DDPM-family sampler fit an epsilon U-Net
    for sampler in ("pndm", "euler", "pipeline"):
        assert validate(capsys, *DIFFUSERS, f"model.path={sdxl}", f"eval.scheduler={sampler}",
                        "losses.ddpm.snr_gamma=5.0", "losses.ddpm.prediction_type=epsilon")[0] == 0


def test_an_epsilon_target_on_a_v_prediction_unet_is_refused(folders, capsys):
    model = [*DIFFUSERS, f"model.path={folders['sdxl_v']}"]
    code, lines = validate(capsys, *model, "losses.ddpm.prediction_type=epsilon")
    assert code == 2
    line = one_error(lines, "losses.ddpm.prediction_type")
    assert "predicts v (v_prediction" in line and "(or v_prediction)" in line
    assert validate(capsys, *model, "losses.ddpm.prediction_type=v_prediction")[0] == 0


def test_models_built_in_code_are_checked_without_files(capsys):
    code, lines = validate(capsys, "eval.scheduler=flow_match_euler", "--no-data")
    assert code == 2 and "tiny_random" in one_error(lines, "eval.scheduler")


# -- every problem at once; run refuses before loading anything ----------------------------------------

def test_objective_problems_are_reported_with_every_other_problem(folders):
    overrides = [*DIFFUSERS, f"model.path={folders['sd3']}", "eval.scheduler=ddim", "losses.ddpm.snr_gamma=5.0",
                 "losses.ddpm.prediction_type=epsilon", "router.num_codes=four", "engine.zero_stage=5"]
    with pytest.raises(RecipeError) as err:
        load_recipe(SMOKE, overrides)
    problems = err.value.problems
    keys = sorted(p.split(": ")[1] for p in problems)
    assert keys == ["engine.zero_stage", "eval.scheduler", "losses.ddpm.prediction_type", "losses.ddpm.snr_gamma",
                    "router.num_codes"]
    assert all(p.startswith(str(SMOKE)) for p in problems)


def test_run_refuses_before_building_anything(folders, tmp_path, capsys):
    out = tmp_path / "run"
    code = main(["run", str(SMOKE), *DIFFUSERS, f"model.path={folders['sd3']}", "--output", str(out)])
    assert code == 2
    assert "set eval.scheduler=pipeline" in one_error(capsys.readouterr().err.splitlines(), "eval.scheduler")
    assert not out.exists()


@pytest.mark.parametrize("path", REAL_MODEL_RECIPES, ids=[str(p.relative_to(REPO)) for p in REAL_MODEL_RECIPES])
def test_shipped_real_model_recipes_are_checked_without_files(path):
    """Every shipped recipe for a published model names a hub id whose objective is known with no file
    at hand (CI's `validate --no-data`), and its sampler fits: the other family's is refused."""
    from prunekit.model_objective import published_objective

    recipe = load_recipe(path, model_files=False)
    model = published_objective(recipe.data["model"]["path"])
    assert model is not None, recipe.data["model"]["path"]
    wrong = "pndm" if model.flow else "flow_match_euler"
    with pytest.raises(RecipeError) as err:
        load_recipe(path, [f"eval.scheduler={wrong}"], model_files=False)
    assert [p.split(": ")[1] for p in err.value.problems] == ["eval.scheduler"]


# -- what is not known here is not checked -----------------------------------------------------------------

def test_no_data_skips_the_local_folder(folders, capsys):
    model = [*DIFFUSERS, f"model.path={folders['sd3']}", "eval.scheduler=pndm"]
    assert validate(capsys, *model)[0] == 2
    assert validate(capsys, *model, "--no-data") == (0, [f"{SMOKE}: valid (method 'aptp')"])
    # a folder that does not exist here is the data check's (and run's preflight's) to report
    assert validate(capsys, *DIFFUSERS, "model.path=/nowhere/sd3", "eval.scheduler=pndm", "--no-data")[0] == 0


def _fake_hub_cache(root, repo_id, folder):
    """The layout huggingface_hub's cache gives ``repo_id`` at one revision: config files only."""
    repo = root / f"models--{repo_id.replace('/', '--')}"
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text("0" * 40)
    snapshot = repo / "snapshots" / ("0" * 40)
    (snapshot / "scheduler").mkdir(parents=True)
    shutil.copy(folder / "model_index.json", snapshot / "model_index.json")
    shutil.copy(folder / "scheduler" / "scheduler_config.json", snapshot / "scheduler" / "scheduler_config.json")


def test_hub_ids_published_cached_or_unreachable(folders, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    _fake_hub_cache(cache, "acme/tiny-sd3", folders["sd3"])
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def check(model_path, *extra):
        return run_cli("validate", str(SMOKE), *DIFFUSERS, f"model.path={model_path}", "eval.scheduler=pndm", *extra)

    cached = check("acme/tiny-sd3")
    assert cached.returncode == 2 and "acme/tiny-sd3 (StableDiffusion3Pipeline" in cached.stderr
    assert check("acme/tiny-sd3", "--no-data").returncode == 0  # the cache is this machine's
    published = check("stabilityai/stable-diffusion-3.5-medium", "--no-data")  # known without any file
    assert published.returncode == 2
    assert "stabilityai/stable-diffusion-3.5-medium (StableDiffusion3Pipeline)" in published.stderr
    unreachable = check("acme/not-cached")
    assert unreachable.returncode == 0, unreachable.stderr


# -- the same refusals where the pipeline is at hand -----------------------------------------------------

def test_samplers_and_targets_of_the_other_family_are_refused_at_run_time():
    import torch
    from diffusers import DDPMScheduler, FlowMatchEulerDiscreteScheduler

    from prunekit import objectives
    from prunekit.evaluation.generation import with_scheduler
    from prunekit.tiny import build_tiny_pipeline, build_tiny_sd3_pipeline

    with pytest.raises(ValueError, match="flow-matching sampler.*DDPM-family model"):
        with_scheduler(build_tiny_pipeline(0), "flow_match_euler")
    sd3 = build_tiny_sd3_pipeline(0)
    with pytest.raises(ValueError, match="DDPM-family sampler.*flow matching"):
        with_scheduler(sd3, "euler")
    swapped = with_scheduler(sd3, "flow_match_euler")  # the sampler of its own family
    assert type(swapped.scheduler).__name__ == "FlowMatchEulerDiscreteScheduler"
    assert swapped.scheduler.config.shift == sd3.scheduler.config.shift and swapped.transformer is sd3.transformer
    x = torch.zeros(1, 4, 2, 2)
    t = torch.tensor([10])
    with pytest.raises(ValueError, match="prediction_type=auto"):
        objectives.target(DDPMScheduler(), x, x, t, "flow_matching")
    with pytest.raises(ValueError, match="prediction_type=auto"):
        objectives.target(FlowMatchEulerDiscreteScheduler(), x, x, t, "epsilon")
