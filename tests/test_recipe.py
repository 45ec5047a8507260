"""Recipes: extension, overrides, validation of every problem at once."""

from __future__ import annotations

import time
from pathlib import Path

import pytest
from helpers import REPO, run_cli

from prunekit.errors import RecipeError
from prunekit.recipe import load_recipe

RECIPES = sorted(p for p in (REPO / "recipes").rglob("*.yaml") if "sweeps" not in p.parts)


@pytest.mark.parametrize("path", RECIPES, ids=[str(p.relative_to(REPO)) for p in RECIPES])
def test_every_shipped_recipe_validates(path: Path):
    recipe = load_recipe(path)
    assert recipe.data["method"]["name"]


def _write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


BASE = """
name: base
method: {name: dense_finetune, steps: 5}
model: {name: tiny_random}
dataset: {name: shapes, size: 8}
losses: {ddpm: {weight: 1.0}}
engine: {micro_batch: 4}
"""


def test_extends_and_overrides(tmp_path):
    _write(tmp_path, "base.yaml", BASE)
    child = _write(tmp_path, "child.yaml", "base: base.yaml\nname: child\nmethod: {lr: 0.001}\nengine: {zero_stage: 1}\n")
    recipe = load_recipe(child, ["method.steps=7", "dataset.size=16"])
    data = recipe.data
    assert data["name"] == "child"
    assert data["method"] == {"name": "dense_finetune", "steps": 7, "lr": 0.001}
    assert data["dataset"]["size"] == 16
    assert data["engine"]["zero_stage"] == 1 and data["engine"]["micro_batch"] == 4
    assert data["engine"]["precision"] == "fp32"  # core defaults are filled in
    assert "base" not in data


def test_all_problems_reported_at_once(tmp_path):
    bad = _write(
        tmp_path,
        "bad.yaml",
        BASE
        + "router: {name: apt, num_codes: 4}\n"
        + "budgett: 0.5\n",
    )
    with pytest.raises(RecipeError) as err:
        load_recipe(bad, ["method.stepz=3", "engine.micro_batch=two", "engine.zero_stage=5", "losses.ddpm.weight=-1"])
    problems = err.value.problems
    text = "\n".join(problems)
    assert "budgett: unknown key (did you mean 'budget'?)" in text
    assert "method.stepz: unknown key (did you mean 'steps'?)" in text
    assert "engine.micro_batch: expected an integer, got 'two'" in text
    assert "engine.zero_stage: 5 is out of range (must be <= 3)" in text
    assert "losses.ddpm.weight: -1 is out of range (must be >= 0)" in text
    assert "router.name: unknown router 'apt'" in text
    assert len(problems) == 6
    assert all(p.startswith(str(bad)) for p in problems)


def test_missing_method_and_required_sections(tmp_path):
    path = _write(tmp_path, "r.yaml", "name: x\nmethod: {name: dense_finetune}\n")
    with pytest.raises(RecipeError) as err:
        load_recipe(path)
    text = "\n".join(err.value.problems)
    for section in ("model", "dataset", "losses"):
        assert f"{section}: method 'dense_finetune' needs a '{section}' section" in text
    path = _write(tmp_path, "r2.yaml", "name: x\n")
    with pytest.raises(RecipeError, match="method: required section is missing"):
        load_recipe(path)


def test_cycles_missing_files_and_yaml_errors(tmp_path):
    _write(tmp_path, "a.yaml", "base: b.yaml\nname: a\n")
    _write(tmp_path, "b.yaml", "base: a.yaml\n")
    with pytest.raises(RecipeError, match="cycle"):
        load_recipe(tmp_path / "a.yaml")
    with pytest.raises(RecipeError, match="recipe file not found"):
        load_recipe(tmp_path / "nope.yaml")
    _write(tmp_path, "c.yaml", "name: [unclosed\n")
    with pytest.raises(RecipeError, match="cannot parse YAML"):
        load_recipe(tmp_path / "c.yaml")
    _write(tmp_path, "d.yaml", "base: missing.yaml\nname: d\n")
    with pytest.raises(RecipeError, match="missing.yaml: recipe file not found"):
        load_recipe(tmp_path / "d.yaml")


def test_no_resolver_can_execute_code(tmp_path):
    path = _write(tmp_path, "r.yaml", BASE + "description: ${eval:'__import__(\"os\").getcwd()'}\n")
    with pytest.raises(RecipeError, match="eval"):
        load_recipe(path)
    ok = _write(tmp_path, "ok.yaml", BASE + "description: steps ${method.steps}\n")
    assert load_recipe(ok).data["description"] == "steps 5"


def test_bad_override_syntax(tmp_path):
    path = _write(tmp_path, "r.yaml", BASE)
    with pytest.raises(RecipeError, match="expected KEY=VALUE"):
        load_recipe(path, ["method.steps"])


def test_broken_recipe_on_the_cli_is_fast_one_line_each_exit_2(tmp_path):
    bad = _write(tmp_path, "bad.yaml", BASE.replace("steps: 5", "steps: 5, stpes: 3") + "router: {name: nope}\n")
    out = tmp_path / "out"
    start = time.perf_counter()
    result = run_cli("run", str(bad), "engine.micro_batch=two", "--output", str(out))
    elapsed = time.perf_counter() - start
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 3, result.stderr
    assert any("method.stpes: unknown key (did you mean 'steps'?)" in line for line in lines)
    assert any("engine.micro_batch: expected an integer" in line for line in lines)
    assert any("router.name: unknown router 'nope'" in line for line in lines)
    assert "Traceback" not in result.stderr
    assert not out.exists()
    assert elapsed < 5, elapsed
    validate = run_cli("validate", str(bad))
    assert validate.returncode == 2 and len(validate.stderr.strip().splitlines()) == 2


def test_selecting_another_component_replaces_the_inherited_section(tmp_path):
    _write(tmp_path, "base.yaml", BASE.replace("dataset: {name: shapes, size: 8}", "dataset: {name: shapes, size: 8, seed: 3}"))
    child = _write(tmp_path, "child.yaml", "base: base.yaml\nname: c\ndataset: {name: prompts, items: [a, b]}\n")
    assert load_recipe(child).data["dataset"] == {"name": "prompts", "items": ["a", "b"]}
    same = _write(tmp_path, "same.yaml", "base: base.yaml\nname: s\ndataset: {name: shapes, size: 4}\n")
    assert load_recipe(same).data["dataset"] == {"name": "shapes", "size": 4, "seed": 3}


def test_eval_is_a_core_section_kept_when_a_child_names_another_method(tmp_path):
    _write(tmp_path, "base.yaml", BASE + "eval: {prompts: 6, steps: 2, dataset: {name: shapes, size: 4, seed: 3}}\n")
    child = _write(tmp_path, "child.yaml", "base: base.yaml\nname: c\nmethod: {name: magnitude}\n"
                                           "eval: {dataset: {name: prompts, items: [a, b]}}\n")
    data = load_recipe(child, ["eval.seed=5"]).data
    assert data["method"] == {"name": "magnitude"}
    # inherited through a change of method; a dataset naming another component replaces the inherited one
    assert data["eval"]["prompts"] == 6 and data["eval"]["steps"] == 2 and data["eval"]["seed"] == 5
    assert data["eval"]["dataset"] == {"name": "prompts", "items": ["a", "b"]}
    assert data["eval"]["guidance_scale"] == 7.5  # core defaults are filled in, as for engine:
    with pytest.raises(RecipeError) as err:
        load_recipe(child, ["eval.steps=0", "eval.bogus=1"])
    assert any("eval.steps" in p for p in err.value.problems)
    assert any("eval.bogus" in p for p in err.value.problems)


def test_method_eval_names_its_new_place(tmp_path):
    old = _write(tmp_path, "old.yaml", BASE.replace("steps: 5}", "steps: 5, eval: {prompts: 4}}"))
    with pytest.raises(RecipeError) as err:
        load_recipe(old)
    assert err.value.problems == [f"{old}: method.eval: the evaluation settings are the top-level eval: section "
                                  f"now (e.g. eval.prompts=1000 instead of method.eval.prompts=1000)"]
