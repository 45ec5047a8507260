"""``dense_finetune`` with ``train_text_encoder``: every text encoder of a pipeline trains jointly with
its denoiser, in every family (SDXL's two CLIPs, SD3's CLIP-L and CLIP-G, PixArt's T5, Flux's CLIP and
T5), under ZeRO-0 and ZeRO-3; without it, they are saved bit for bit as loaded."""

from __future__ import annotations

import pytest
import torch
from helpers import DENSE, ONE_STEP, run_cli
from safetensors.torch import load_file

pytestmark = pytest.mark.usefixtures("restore_threads")

ENCODERS = {"sdxl": ("text_encoder", "text_encoder_2"), "sd3": ("text_encoder", "text_encoder_2"),
            "pixart": ("text_encoder",), "flux": ("text_encoder", "text_encoder_2")}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from prunekit.tiny import save_tiny_family

    root = tmp_path_factory.mktemp("te_families")
    return {family: save_tiny_family(family, root / family) for family in ENCODERS}


def _weights(folder, part: str) -> dict[str, torch.Tensor]:
    out: dict[str, torch.Tensor] = {}
    for file in sorted((folder / part).glob("*.safetensors")):
        out.update(load_file(str(file)))
    assert out, f"no weights in {folder / part}"
    return out


def _changed(before: dict[str, torch.Tensor], after: dict[str, torch.Tensor]) -> float:
    """Share of tensors that moved (embedding rows of unused tokens may stay)."""
    assert before.keys() == after.keys()
    return sum(not torch.equal(before[k], after[k]) for k in before) / len(before)


def _finetune(folder, out, *extra: str):
    """Two steps of ``dense_finetune`` on the pipeline saved in ``folder`` (None: the built-in tiny SD one)."""
    model = [] if folder is None else ["model.name=diffusers_sd", f"model.path={folder}", "eval.scheduler=pipeline"]
    steps = [a for a in ONE_STEP if not a.startswith("method.steps")]
    result = run_cli("run", str(DENSE), *model, *steps, "method.steps=2", "method.lr=1e-3", "method.cond_dropout=0.5",
                     *extra, "--output", str(out))
    assert result.returncode == 0, result.stderr[-3000:]
    return out / "artifacts" / "pipeline"


@pytest.mark.parametrize("family", list(ENCODERS))
def test_every_text_encoder_trains_with_the_denoiser(folders, tmp_path, family):
    folder = folders[family]
    saved = _finetune(folder, tmp_path / "run", "method.train_text_encoder=true")
    denoiser = "unet" if family == "sdxl" else "transformer"
    for part in (*ENCODERS[family], denoiser):
        assert _changed(_weights(folder, part), _weights(saved, part)) > 0.5, part


def test_frozen_text_encoders_are_saved_as_loaded_and_zero3_trains_them(folders, tmp_path):
    folder = folders["sdxl"]
    frozen = _finetune(folder, tmp_path / "frozen")
    for part in ENCODERS["sdxl"]:
        before, after = _weights(folder, part), _weights(frozen, part)
        assert all(torch.equal(before[k], after[k]) for k in before), part
    assert _changed(_weights(folder, "unet"), _weights(frozen, "unet")) > 0.5
    zero3 = _finetune(folder, tmp_path / "zero3", "method.train_text_encoder=true", "engine.zero_stage=3")
    for part in ENCODERS["sdxl"]:
        assert _changed(_weights(folder, part), _weights(zero3, part)) > 0.5, part


def test_sd_text_encoder_trains_under_zero3(tmp_path):
    """SD 1.x / 2.x's one CLIP (the tiny built-in pipeline) under ZeRO-3: its embeddings read a child's
    weight outside that child's forward, which ZeRO-3 gathers only inside the engine's forward prologue."""
    frozen = _finetune(None, tmp_path / "frozen")
    trained = _finetune(None, tmp_path / "zero3", "method.train_text_encoder=true", "engine.zero_stage=3")
    assert _changed(_weights(frozen, "text_encoder"), _weights(trained, "text_encoder")) > 0.5
