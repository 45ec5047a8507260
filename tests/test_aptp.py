"""APTP end to end on a tiny SD-shaped pipeline (CPU, DeepSpeed single process)."""

from __future__ import annotations

import json
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from helpers import REPO, SMOKE, kill_at_checkpoint, run_recipe


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("aptp") / "run"
    run, metrics = run_recipe(SMOKE, ["engine.zero_stage=2"], output=out)
    return out, metrics


def test_all_stages_complete_and_mixture_is_consistent(smoke_run):
    from prunekit.unet import load_expert, measure_macs

    out, metrics = smoke_run
    stages = json.loads((out / "stages.json").read_text())
    assert list(stages) == ["encode", "prune_warmup", "prune", "route", *[f"finetune_expert_{i}" for i in range(4)], "export"]
    manifest = json.loads((out / "artifacts" / "mixture" / "manifest.json").read_text())
    router_config = json.loads((out / "artifacts" / "mixture" / "router" / "config.json").read_text())
    assert len(manifest["experts"]) == 4 and router_config["router"]["name"] == "aptp"
    counts = metrics["routing"]["counts"]
    assert sum(counts) == 64
    assert [e["samples"] for e in metrics["experts"]] == counts
    # the MACs recorded for each expert are what the physically pruned, saved expert really costs
    for entry in manifest["experts"]:
        expert = load_expert(out / "artifacts" / "mixture" / entry["path"])
        h, w = manifest["latent_size"]
        measured = measure_macs(expert, height=h, width=w, text_len=manifest["text_len"])
        assert measured == pytest.approx(entry["macs"], rel=0.01)
    trained = [e for e in metrics["experts"] if e["samples"]]
    assert trained and all(e["finetune_steps"] == 3 for e in trained)


def test_mixture_pipeline_keeps_input_order_and_matches_each_expert_alone(smoke_run):
    from prunekit.pipeline import PromptRoutedPipeline

    out, _ = smoke_run
    pipe = PromptRoutedPipeline.from_pretrained(out / "artifacts" / "mixture")
    prompts = ["a large red circle", "a small blue square", "a small green triangle", "a large yellow square",
               "a small purple circle", "a large orange triangle"]
    kwargs = dict(num_inference_steps=2, output_type="np", height=32, width=32, guidance_scale=7.5)
    result = pipe(prompts, seed=10, **kwargs)
    assert result.experts == pipe.route(prompts)
    for i, prompt in enumerate(prompts):
        alone = pipe.expert_pipeline(result.experts[i])(
            [prompt], generator=[torch.Generator().manual_seed(10 + i)], **kwargs
        ).images[0]
        np.testing.assert_allclose(result.images[i], alone, atol=1e-5)


def test_an_expert_of_the_run_loads_in_diffusers_and_draws_what_the_mixture_draws(smoke_run, tmp_path):
    from diffusers import DiffusionPipeline, UNet2DConditionModel

    from prunekit.pipeline import PromptRoutedPipeline

    out, _ = smoke_run
    mixture_dir = out / "artifacts" / "mixture"
    pipe = PromptRoutedPipeline.from_pretrained(mixture_dir)
    prompts = ["a large red circle", "a small blue square", "a small green triangle"]
    expert = pipe.route(prompts)[0]
    pipe.save_expert_pipeline(expert, tmp_path / "expert")
    alone = DiffusionPipeline.from_pretrained(tmp_path / "expert")
    alone.set_progress_bar_config(disable=True)
    kwargs = dict(num_inference_steps=2, output_type="np", height=32, width=32)
    inside = pipe(prompts[:1], generator=[torch.Generator().manual_seed(7)], **kwargs).images
    loaded = alone(prompts[:1], generator=[torch.Generator().manual_seed(7)], **kwargs).images
    np.testing.assert_allclose(loaded, inside, atol=1e-5)
    with pytest.raises(ValueError, match="PrunedUNet2DConditionModel"):
        UNet2DConditionModel.from_pretrained(mixture_dir / "experts" / f"expert_{expert:02d}")


def test_export_command_writes_one_expert_as_a_pipeline_folder(smoke_run, tmp_path, capsys):
    from diffusers import DiffusionPipeline

    from prunekit.cli import main
    from prunekit.unet import PrunedUNet2DConditionModel

    out, _ = smoke_run
    mixture_dir = out / "artifacts" / "mixture"
    assert main(["export", str(mixture_dir), "2", str(tmp_path / "e2")]) == 0
    pipe = DiffusionPipeline.from_pretrained(tmp_path / "e2")
    assert isinstance(pipe.unet, PrunedUNet2DConditionModel)
    assert pipe.unet.config.pruning["mask"] == json.loads(
        (mixture_dir / "experts" / "expert_02" / "config.json").read_text())["pruning"]["mask"]
    capsys.readouterr()
    assert main(["export", str(mixture_dir), "9", str(tmp_path / "e9")]) == 2
    assert capsys.readouterr().err.strip().splitlines() == ["error: expert 9 does not exist: the mixture has experts 0..3"]
    assert not (tmp_path / "e9").exists()


def test_router_ot_balances_where_nearest_code_collapses():
    from prunekit_plugins.aptp.router import APTPRouterConfig, build_router

    torch.manual_seed(0)
    router = build_router(APTPRouterConfig(num_codes=4), embed_dim=16, num_units=32)
    base = torch.randn(32)
    with torch.no_grad():
        router.codes.copy_(torch.stack([base + 0.5 * torch.randn(32) for _ in range(4)]))
    e = (router.codes[0].detach() + 0.05 * torch.randn(64, 32))  # every item sits next to code 0
    nearest = build_router(APTPRouterConfig(num_codes=4, optimal_transport=False), embed_dim=16, num_units=32)
    nearest.load_state_dict(router.state_dict())
    assert nearest.assign(e).bincount(minlength=4).tolist() == [64, 0, 0, 0]
    balanced = router.assign(e).bincount(minlength=4)
    assert balanced.min() >= 8, balanced.tolist()


def _history(out: Path, phase: str) -> list[dict]:
    return json.loads((out / "artifacts" / f"prune_{phase}_history.json").read_text())


def test_training_assignments_balanced_with_ot_and_not_without(tmp_path):
    used = {}
    for ot in (True, False):
        run_recipe(SMOKE, [f"router.optimal_transport={ot}", "method.finetune.iters=0",
                           "method.prune.iters=12", "method.prune.warmup_iters=0"], output=tmp_path / f"run_{ot}")
        used[ot] = [h["codes_used"] for h in _history(tmp_path / f"run_{ot}", "joint")]
    # 3 Sinkhorn iterations (the paper's setting) give near-equipartition: 3-4 of 4 codes per batch of 8
    assert min(used[True]) >= 3 and np.mean(used[True]) >= 3.25, used[True]
    # nearest-code routing of the same start leaves codes without samples
    assert np.mean(used[False]) < np.mean(used[True]), used


def test_resource_loss_drives_the_exported_mixture_to_the_target(tmp_path):
    run, metrics = run_recipe(SMOKE, ["budget.target=0.6", "method.prune.warmup_iters=30", "method.prune.lr=0.05",
                                      "method.prune.iters=30", "method.prune.lr_cooldown=10", "router.init_logit=1.0",
                                      "engine.micro_batch=32", "method.finetune.iters=0", "dataset.size=128",
                                      "losses.contrastive=null"], output=tmp_path / "run")
    ratios = [h["macs_deployed"] for h in _history(tmp_path / "run", "warmup")]
    assert ratios[0] > 0.95  # starts dense
    # charged on the hard masks, the budget holds for the architectures that are exported
    assert abs(metrics["routing"]["mean_macs_ratio"] - 0.6) < 0.02, metrics["routing"]
    used = [r for r, c in zip(metrics["routing"]["macs_ratio"], metrics["routing"]["counts"]) if c]
    assert metrics["routing"]["macs_ratio_spread"] == pytest.approx(max(used) - min(used))


def test_sampled_budget_leaves_the_exported_masks_dense(tmp_path):
    """The paper's literal eq. 15 charges the noisy gates: their mean falls to the target while most
    logits stay positive, so the thresholded experts keep far more than the budget."""
    run, metrics = run_recipe(SMOKE, ["budget.target=0.6", "method.prune.warmup_iters=30", "method.prune.lr=0.01",
                                      "method.prune.iters=150", "method.prune.budget_on=sampled", "engine.micro_batch=32",
                                      "method.finetune.iters=0", "dataset.size=128", "losses.contrastive=null"],
                              output=tmp_path / "run")
    sampled = [h["macs_ratio"] for h in _history(tmp_path / "run", "joint")]
    assert abs(np.mean(sampled[-10:]) - 0.6) < 0.03
    assert metrics["routing"]["mean_macs_ratio"] > 0.75, metrics["routing"]


@pytest.mark.slow
def test_kill_and_resume_gives_the_same_final_state(tmp_path):
    args = ["method.prune.iters=60", "method.prune.warmup_iters=4", "engine.checkpoint_every=10",
            "method.finetune.iters=2"]
    full = tmp_path / "full"
    run_recipe(SMOKE, args, output=full)

    killed = tmp_path / "killed"
    cmd = [sys.executable, "-m", "prunekit", "run", str(SMOKE), "--output", str(killed), "-q", *args]
    proc = subprocess.Popen(cmd, cwd=REPO, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    latest = killed / "checkpoints" / "prune_joint" / "latest"
    kill_at_checkpoint(proc, latest, ("step_20", "step_30"), deadline=time.time() + 300)
    assert proc.wait() == -signal.SIGKILL, "the run finished before it could be killed"
    resumed = subprocess.run([*cmd, "--resume"], cwd=REPO, capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-2000:]

    from safetensors.torch import load_file

    for name in ["router_joint.safetensors", "mixture/router/diffusion_pytorch_model.safetensors",
                 *[f"mixture/experts/expert_{i:02d}/diffusion_pytorch_model.safetensors" for i in range(4)]]:
        a, b = load_file(full / "artifacts" / name), load_file(killed / "artifacts" / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=0)
