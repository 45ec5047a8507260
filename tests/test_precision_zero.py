"""Every training method under each precision and ZeRO stage the engine offers on a CPU.

In fp32 the ZeRO stage changes where a parameter lives, not what is computed: ZeRO-1 and ZeRO-3
runs end with the weights of ZeRO-0 up to the order of float reductions (flattened gradients and
their norm; Adam magnifies that noise on near-zero gradients to ~1e-5). bf16 runs are checked
to complete with finite weights of the right dtype, and to route like fp32 does.
"""

from __future__ import annotations

import json

import pytest
import torch
from helpers import REPO
from safetensors.torch import load_file

from prunekit.recipe import load_recipe
from prunekit.registry import get_registry
from prunekit.runner import execute

TINY = REPO / "recipes" / "tiny"
FAST = ["method.eval.samples_per_expert=1", "method.eval.steps=2"]
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


def _weights(run_dir, recipe: str) -> dict[str, torch.Tensor]:
    art = run_dir / "artifacts"
    if recipe == "dense_finetune":
        return load_file(art / "pipeline" / "unet" / "diffusion_pytorch_model.safetensors")
    out = {}
    for path in sorted((art / "mixture").rglob("*.safetensors")):
        out.update({f"{path.relative_to(art)}:{k}": v for k, v in load_file(path).items()})
    return out


def _run(tmp_path_factory, recipe: str, switch: str | None):
    out = tmp_path_factory.mktemp(f"{recipe}_{switch or 'fp32'}") / "run"
    overrides = [*SHORT[recipe], *(SWITCHES[switch] if switch else ["engine.zero_stage=0"])]
    _, metrics = execute(load_recipe(TINY / f"{recipe}.yaml", overrides), get_registry(), output=out,
                         console_log=False)
    assert json.loads((out / "run.json").read_text())["status"] == "completed"
    return out, metrics


_BASELINES: dict[str, object] = {}


def _baseline(tmp_path_factory, recipe: str):
    if recipe not in _BASELINES:
        _BASELINES[recipe] = _run(tmp_path_factory, recipe, None)
    return _BASELINES[recipe]


def _check(tmp_path_factory, recipe: str, switch: str) -> None:
    base_dir, base_metrics = _baseline(tmp_path_factory, recipe)
    out, metrics = _run(tmp_path_factory, recipe, switch)
    ref, got = _weights(base_dir, recipe), _weights(out, recipe)
    assert ref.keys() == got.keys() and ref
    if "bf16" not in switch:
        for key in ref:  # fp32: the ZeRO stage does not change the result
            torch.testing.assert_close(got[key], ref[key], rtol=1e-3, atol=1e-4, msg=key)
        return
    assert all(bool(torch.isfinite(v.float()).all()) for v in got.values())
    assert any(v.dtype == torch.bfloat16 for v in got.values())  # trained in bf16, saved as trained
    if recipe != "dense_finetune":
        # The router / selection is fp32 in every precision; a bf16 U-Net changes little of it.
        assert metrics["experts"][0]["macs_ratio"] == pytest.approx(base_metrics["experts"][0]["macs_ratio"], abs=0.05)


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

    code = main(["run", str(TINY / "aptp_smoke.yaml"), "engine.precision=fp16", "--output", str(tmp_path / "r"), "-q"])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and err == ["error: engine.precision=fp16 needs a GPU; use bf16 or fp32 on CPU"]
    assert not (tmp_path / "r").exists()
