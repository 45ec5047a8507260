"""The command line: light commands stay light; runs write their own directory and never overwrite."""

from __future__ import annotations

import json
import subprocess
import sys

from helpers import REPO, run_cli

from prunekit import __version__


def test_version_and_help():
    result = run_cli("--version")
    assert result.returncode == 0 and result.stdout.strip() == f"prunekit {__version__}"
    result = run_cli("--help")
    assert result.returncode == 0 and "validate" in result.stdout and "plugins" in result.stdout


def test_light_commands_do_not_import_heavy_libraries():
    code = (
        "import sys; from prunekit.cli import main;"
        "main(['plugins']); main(['validate', 'recipes/tiny/dense_finetune.yaml']);"
        "heavy = [m for m in ('torch', 'diffusers', 'deepspeed', 'transformers') if m in sys.modules];"
        "print('HEAVY', heavy)"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True)
    assert "HEAVY []" in result.stdout, result.stdout + result.stderr


def test_plugins_kind_filter_and_unknown_kind():
    result = run_cli("plugins", "--kind", "model")
    assert result.returncode == 0
    assert "tiny_random" in result.stdout and "dense_finetune" not in result.stdout
    result = run_cli("plugins", "--kind", "modle")
    assert result.returncode == 2 and "unknown kind 'modle' (did you mean 'model'?)" in result.stderr


def test_missing_model_path_stops_before_work(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text(
        "name: m\nmethod: {name: dense_finetune}\nmodel: {name: diffusers_sd, path: /nonexistent/sd21}\n"
        "dataset: {name: shapes}\nlosses: {ddpm: {}}\n"
    )
    result = run_cli("run", str(recipe), "--output", str(tmp_path / "out"))
    assert result.returncode == 2
    assert result.stderr.strip().splitlines() == [
        "error: model folder /nonexistent/sd21 does not exist (set model.path=DIR)"
    ]
    assert not (tmp_path / "out").exists()


def test_tiny_run_end_to_end_refuses_overwrite_and_resumes(tmp_path):
    out = tmp_path / "run"
    args = ["run", "recipes/tiny/dense_finetune.yaml", "--output", str(out), "method.steps=6",
            "dataset.size=32", "engine.checkpoint_every=3", "engine.micro_batch=8"]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["finetune"]["steps"] == 6
    assert (out / "artifacts" / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors").exists()
    assert "stage finetune: done" in (out / "run.log").read_text()
    assert "steps: 6" in (out / "recipe.yaml").read_text()
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
    history = json.loads((out / "artifacts" / "finetune_history.json").read_text())
    assert [h["step"] for h in history] == list(range(1, 7))

    before = (out / "metrics.json").read_text()
    again = run_cli(*args)
    assert again.returncode == 2 and "already exists; pass --resume" in again.stderr
    assert (out / "metrics.json").read_text() == before

    changed = run_cli(*args, "--resume", "method.lr=0.5")
    assert changed.returncode == 2 and "recipe differs" in changed.stderr and "method.lr" in changed.stderr

    resumed = run_cli(*args, "--resume")
    assert resumed.returncode == 0, resumed.stderr
    log = (out / "run.log").read_text()
    assert "stage finetune: already completed, skipped" in log


def test_paper_recipes_stop_at_once_offline_naming_what_to_set(tmp_path):
    import time

    for recipe in ("aptp_coco_base", "aptp_coco_small", "aptp_cc3m_base", "aptp_cc3m_small"):
        out = tmp_path / recipe
        start = time.perf_counter()
        result = run_cli("run", f"recipes/{recipe}.yaml", "--output", str(out))
        assert time.perf_counter() - start < 10
        assert result.returncode == 2, result.stderr
        lines = result.stderr.strip().splitlines()
        assert any("stabilityai/stable-diffusion-2-1" in line and "model.path=" in line for line in lines)
        assert any("dataset." in line and "(set dataset." in line for line in lines)
        assert all(line.startswith("error: ") for line in lines) and "Traceback" not in result.stderr
        assert not out.exists()
