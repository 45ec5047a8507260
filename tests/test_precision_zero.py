"""Every training method under each precision and ZeRO stage the engine offers on a CPU.

In fp32 the ZeRO stage changes where a parameter lives, not what is computed: the first loss of every
training stage is the same as under ZeRO-0 (a ZeRO-3 forward that read an unset partition would not
be), and weights trained by a continuous objective agree up to the order of float reductions. APTP's
joint phase is not compared weight by weight: its optimal-transport argmax turns 1e-7 of reduction
noise into other assignments. bf16 runs are checked to complete with finite weights.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import SMOKE, TINY_RECIPES, run_recipe
from safetensors.torch import load_file

FAST = ["eval.samples_per_expert=1", "eval.steps=2"]
SHORT = {
    "aptp_smoke": ["method.prune.warmup_iters=2", "method.prune.iters=4", "method.finetune.iters=2", *FAST],
    "norm": ["method.finetune.iters=2", *FAST],
    "uni_arch": ["method.prune.iters=4", "method.finetune.iters=2", *FAST],
    "dense_finetune": ["method.steps=4", "method.warmup_steps=1", "dataset.size=64"],
}
SWITCHES = {
    "zero1": ["engine.zero_stage=1"],
    "zero3": ["engine.zero_stage=3"],
    "bf16": ["engine.precision=bf16"],
    "bf16_zero3": ["engine.precision=bf16", "engine.zero_stage=3"],
}


# Artefacts trained by a continuous objective (no argmax on the way), compared weight by weight.
CONTINUOUS = {"aptp_smoke": ["router_warmup.safetensors"], "norm": ["mixture/experts/expert_00/diffusion_pytorch_model.safetensors"],
              "uni_arch": [], "dense_finetune": ["pipeline/unet/diffusion_pytorch_model.safetensors"]}


def _weights(run_dir, names) -> dict[str, torch.Tensor]:
    art = run_dir / "artifacts"
    return {f"{name}:{k}": v for name in names for k, v in load_file(art / name).items()}


def _all_weights(run_dir) -> list[torch.Tensor]:
    art = run_dir / "artifacts"
    return [t for p in art.rglob("*.safetensors") if "encoded" not in p.parts for t in load_file(p).values()]


# The first training stage of each method: its first loss comes before any update, so it depends only
# on the forward computation (which the ZeRO stage must not change).
FIRST = {"aptp_smoke": "prune_warmup", "norm": "finetune_expert_0", "uni_arch": "prune_joint",
         "dense_finetune": "finetune"}


def _first_losses(run_dir, recipe: str) -> dict[str, float]:
    history = json.loads((run_dir / "artifacts" / f"{FIRST[recipe]}_history.json").read_text())
    return {"first": history[0]["loss"], "steps": len(history)}


def _run(tmp_path_factory, recipe: str, switch: str | None):
    out = tmp_path_factory.mktemp(f"{recipe}_{switch or 'fp32'}") / "run"
    overrides = [*SHORT[recipe], *(SWITCHES[switch] if switch else ["engine.zero_stage=0"])]
    _, metrics = run_recipe(TINY_RECIPES / f"{recipe}.yaml", overrides, output=out)
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
    return out, metrics


_BASELINES: dict[str, object] = {}


def _baseline(tmp_path_factory, recipe: str):
    if recipe not in _BASELINES:
        _BASELINES[recipe] = _run(tmp_path_factory, recipe, None)
    return _BASELINES[recipe]


def _check(tmp_path_factory, recipe: str, switch: str) -> None:
    base_dir, _ = _baseline(tmp_path_factory, recipe)
    out, _ = _run(tmp_path_factory, recipe, switch)
    first, ref_first = _first_losses(out, recipe), _first_losses(base_dir, recipe)
    assert first["steps"] == ref_first["steps"]
    weights = _all_weights(out)
    assert weights and all(bool(torch.isfinite(v.float()).all()) for v in weights)
    if "bf16" in switch:
        # bf16 changes the numbers, not what is trained: first losses within bf16's resolution.
        assert first["first"] == pytest.approx(ref_first["first"], rel=0.1, abs=1e-3)
        return
    assert first["first"] == pytest.approx(ref_first["first"], rel=1e-5, abs=1e-7)
    ref, got = _weights(base_dir, CONTINUOUS[recipe]), _weights(out, CONTINUOUS[recipe])
    for key in ref:
        torch.testing.assert_close(got[key], ref[key], rtol=1e-3, atol=1e-4, msg=key)


@pytest.mark.parametrize("switch", ["bf16_zero3", "zero3"])
def test_aptp_smoke_under_precision_and_zero(tmp_path_factory, switch):
    _check(tmp_path_factory, "aptp_smoke", switch)


@pytest.mark.slow
@pytest.mark.parametrize("recipe,switch", [
    ("aptp_smoke", "zero1"), ("aptp_smoke", "bf16"),
    *[(r, s) for r in ("norm", "uni_arch", "dense_finetune") for s in SWITCHES],
])
def test_method_under_precision_and_zero(tmp_path_factory, recipe, switch):
    _check(tmp_path_factory, recipe, switch)


@pytest.mark.skipif(torch.cuda.is_available(), reason="fp16 is allowed on a GPU")
def test_fp16_on_cpu_is_refused_with_one_line_before_any_work(tmp_path, capsys):
    from prunekit.cli import main

    code = main(["run", str(SMOKE), "engine.precision=fp16", "--output", str(tmp_path / "r"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: engine.precision=fp16 needs a GPU; use bf16 or fp32 on CPU"]
    assert not (tmp_path / "r").exists()
