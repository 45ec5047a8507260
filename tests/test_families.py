"""Families beyond SD 1.x / 2.x through the same stages: SDXL (two text encoders, pooled states, size
ids) and SD3 (CLIP-L + CLIP-G without T5, MMDiT transformer, flow matching), on tiny random pipelines
saved as local diffusers folders and run with the APTP smoke recipe."""

from __future__ import annotations

import json

import pytest
import torch
from family_helpers import (
    FAST,
    PROMPTS,
    PRUNING,
    expected_stages,
    routed_images_equal_their_expert_alone,
    stages,
)
from helpers import SMOKE, run_cli, run_recipe

pytestmark = pytest.mark.usefixtures("restore_threads")

SD3_MODEL = ["model.without=[text_encoder_3,tokenizer_3]", "eval.scheduler=pipeline"]


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from prunekit.tiny import save_tiny_family

    root = tmp_path_factory.mktemp("families")
    return {family: save_tiny_family(family, root / family) for family in ("sdxl", "sd3")}


@pytest.fixture(scope="module")
def sdxl_run(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("sdxl") / "run"
    run, metrics = run_recipe(SMOKE, [*FAST, f"model.path={folders['sdxl']}"], output=out)
    return out, metrics


@pytest.fixture(scope="module")
def sd3_run(folders, tmp_path_factory):
    out = tmp_path_factory.mktemp("sd3") / "run"
    run, metrics = run_recipe(SMOKE, [*FAST, *PRUNING, *SD3_MODEL, f"model.path={folders['sd3']}"], output=out)
    return out, metrics


# -- the objectives -----------------------------------------------------------------------------------

def test_flow_matching_noising_and_target_match_diffusers():
    from diffusers import FlowMatchEulerDiscreteScheduler

    from prunekit import objectives

    scheduler = FlowMatchEulerDiscreteScheduler(shift=3.0)
    torch.manual_seed(0)
    x0, noise = torch.randn(4, 16, 8, 8), torch.randn(4, 16, 8, 8)
    t = scheduler.timesteps[torch.tensor([0, 100, 500, 990])]
    assert objectives.prediction_type(scheduler) == "flow_matching"
    torch.testing.assert_close(objectives.add_noise(scheduler, x0, noise, t), scheduler.scale_noise(x0, t, noise))
    torch.testing.assert_close(objectives.target(scheduler, x0, noise, t), noise - x0)
    drawn = objectives.draw_timesteps(scheduler, 4096)
    assert drawn.min() >= 0 and drawn.max() <= 1000
    # shift 3 moves the uniform sigma's mean 0.5 towards noise: E[3s / (1 + 2s)] ~ 0.65
    assert 620 < float(drawn.mean()) < 690


def test_ddpm_noising_uses_ddpm_forward_process_for_any_sampler():
    from diffusers import DDIMScheduler, DDPMScheduler, EulerDiscreteScheduler

    from prunekit import objectives

    betas = dict(num_train_timesteps=1000, beta_schedule="scaled_linear", beta_start=0.00085, beta_end=0.012)
    torch.manual_seed(0)
    x0, noise = torch.randn(3, 4, 8, 8), torch.randn(3, 4, 8, 8)
    t = torch.tensor([1, 400, 999])
    reference = DDPMScheduler(**betas).add_noise(x0, noise, t)
    ddim = DDIMScheduler(**betas)
    assert torch.equal(objectives.add_noise(ddim, x0, noise, t), ddim.add_noise(x0, noise, t))
    euler = EulerDiscreteScheduler(**betas)  # SDXL's: its own add_noise is x0 + sigma * noise
    torch.testing.assert_close(objectives.add_noise(euler, x0, noise, t), reference)
    assert not torch.allclose(euler.add_noise(x0, noise, t), reference)
    assert objectives.prediction_type(euler) == "epsilon"
    assert objectives.draw_timesteps(euler, 64).dtype == torch.int64


# -- conditioning ---------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["sd", "sdxl", "sd3"])
def test_gated_dense_call_equals_the_plain_denoiser_call(family):
    from prunekit import tiny
    from prunekit.conditioning import conditioning_for, denoiser_of
    from prunekit.denoisers import make_prunable

    pipe = {"sd": tiny.build_tiny_pipeline, "sdxl": tiny.build_tiny_sdxl_pipeline,
            "sd3": tiny.build_tiny_sd3_pipeline}[family](0)
    conditioning = conditioning_for(pipe)
    assert conditioning.family == family
    cond = conditioning.encode(pipe, ["a cat", "two dogs"], [(32, 48), (32, 48)])
    assert tuple(cond) == conditioning.columns
    if family == "sdxl":  # original size, crop top-left, target size
        assert cond["time_ids"].tolist() == [[32, 48, 0, 0, 32, 48]] * 2
        assert cond["text"].shape[-1] == pipe.unet.config.cross_attention_dim
    model = denoiser_of(pipe)
    channels = int(model.config.in_channels)
    torch.manual_seed(0)
    x, t = torch.randn(2, channels, 8, 8), torch.tensor([10, 700])
    plain = conditioning.call(model, x, t, cond)
    prunable = make_prunable(model)
    torch.testing.assert_close(conditioning.gated(prunable, x, t, cond), plain)
    torch.testing.assert_close(conditioning.gated(prunable, x, t, cond, prunable.dense_gates(2)), plain)
    # the conditioning is read: other pooled states or size ids change the prediction
    if family in ("sdxl", "sd3"):
        changed = conditioning.call(model, x, t, {**cond, "pooled": cond["pooled"] + 1})
        assert not torch.allclose(changed, plain)


def test_ddpm_sampler_on_a_flow_matching_pipeline_is_refused():
    from prunekit.evaluation.generation import with_scheduler
    from prunekit.tiny import build_tiny_sd3_pipeline

    with pytest.raises(ValueError, match="eval.scheduler=pipeline"):
        with_scheduler(build_tiny_sd3_pipeline(0), "pndm")


# -- end to end -----------------------------------------------------------------------------------------

def test_sdxl_aptp_smoke_completes_every_stage(sdxl_run):
    out, metrics = sdxl_run
    assert expected_stages() <= set(stages(out))
    index = json.loads((out / "artifacts" / "encoded" / "index.json").read_text())
    # two CLIPs of 16 concatenated (the U-Net's 32), the projected pooled CLIP-G state, 6 size ids
    assert index["shapes"]["text"] == [32, 32]
    assert index["shapes"]["pooled"] == [16]
    assert index["shapes"]["time_ids"] == [6]
    for phase in ("warmup", "joint"):
        assert torch.isfinite(torch.tensor(metrics["prune"][phase]["final_loss"]))
    assert all(torch.isfinite(torch.tensor(e["final_loss"])) for e in metrics["experts"])
    assert metrics["mixture"]["metrics"]["macs_teacher"] > 0


def test_sdxl_mixture_loads_and_each_image_is_its_experts(sdxl_run, tmp_path):
    out, _ = sdxl_run
    mixture = out / "artifacts" / "mixture"
    pipe = routed_images_equal_their_expert_alone(mixture, "StableDiffusionXLPipeline")
    assert pipe.text_encoder_2 is not None and pipe.tokenizer_2 is not None
    result = run_cli("generate", str(mixture), *PROMPTS[:2], "--steps", "2", "-o", str(tmp_path / "png"))
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "png").glob("*.png"))) == 2


def test_sd3_aptp_smoke_prunes_and_completes_every_stage(sd3_run):
    out, metrics = sd3_run
    assert expected_stages() <= set(stages(out))
    index = json.loads((out / "artifacts" / "encoded" / "index.json").read_text())
    # CLIP tokens (32) + the zeros standing in for T5's 256, at the joint attention width; pooled 16 + 16
    assert index["shapes"]["text"] == [288, 32]
    assert index["shapes"]["pooled"] == [32]
    assert index["shapes"]["latents"] == [16, 16, 16]
    ratios = metrics["routing"]["macs_ratio"]
    assert min(ratios) < 0.95  # the resource loss pruned: experts are smaller than the teacher
    assert abs(metrics["routing"]["mean_macs_ratio"] - 0.6) < 0.15
    assert all(torch.isfinite(torch.tensor(e["final_loss"])) for e in metrics["experts"])
    # the mixture's measured MACs at the trained text length agree with the budget's MAC model
    assert metrics["mixture"]["metrics"]["macs_ratio"] == pytest.approx(metrics["routing"]["mean_macs_ratio"],
                                                                        abs=0.15)
    report = json.loads((out / "report" / "report.json").read_text())
    assert report["architecture"]["labels"] == ["T0", "T1"]


def test_sd3_mixture_loads_pruned_transformers_and_generates(sd3_run, tmp_path):
    from prunekit.transformer import PrunedSD3Transformer2DModel

    out, _ = sd3_run
    mixture = out / "artifacts" / "mixture"
    pipe = routed_images_equal_their_expert_alone(mixture, "StableDiffusion3Pipeline")
    assert all(isinstance(e, PrunedSD3Transformer2DModel) for e in pipe.experts)
    assert any("0" in e.pruning["mask"] for e in pipe.experts)
    result = run_cli("generate", str(mixture), PROMPTS[0], "--steps", "2", "-o", str(tmp_path / "png"))
    assert result.returncode == 0, result.stderr
    assert len(list((tmp_path / "png").glob("*.png"))) == 1


@pytest.mark.parametrize("recipe, model", [("aptp_sdxl_base", "stabilityai/stable-diffusion-xl-base-1.0"),
                                           ("aptp_sd35_medium", "stabilityai/stable-diffusion-3.5-medium"),
                                           ("aptp_pixart_sigma", "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS"),
                                           ("aptp_flux_dev", "black-forest-labs/FLUX.1-dev"),
                                           ("aptp_flux_schnell", "black-forest-labs/FLUX.1-schnell")])
def test_real_model_recipes_stop_at_once_offline(recipe, model, tmp_path):
    out = tmp_path / recipe
    result = run_cli("run", f"recipes/{recipe}.yaml", "--output", str(out))
    assert result.returncode == 2, result.stderr
    lines = result.stderr.strip().splitlines()
    assert any(model in line and "model.path=" in line for line in lines)
    assert all(line.startswith("error: ") for line in lines) and "Traceback" not in result.stderr
    assert not out.exists()


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_pixart_and_flux_calls_follow_their_pipelines_conventions(family):
    """PixArt: T5 mask, no size conditioning, the learned-sigma output's first half; Flux: 2x2-packed
    latent tokens, timesteps / 1000 and the dev guidance 3.5. The call on the latent layout equals the
    stock model on the packed inputs."""
    from diffusers import FluxPipeline
    from transformer_helpers import TEXT_LEN, build, inputs

    from prunekit.conditioning import Conditioning
    from prunekit.denoisers import make_prunable

    model = build(family)
    kwargs = inputs(model)
    conditioning = Conditioning(family)
    if family == "pixart":
        mask = torch.ones(2, TEXT_LEN, dtype=torch.long)
        mask[1, 3:] = 0
        cond = {"text": kwargs["encoder_hidden_states"], "text_mask": mask}
        x, t = kwargs["hidden_states"], kwargs["timestep"]
        # learned sigma (out_channels 8): the pipeline samples with the first half, and so does training
        expected = model(x, encoder_hidden_states=cond["text"], timestep=t, encoder_attention_mask=mask,
                         added_cond_kwargs={"resolution": None, "aspect_ratio": None}).sample[:, :4]
        unmasked = conditioning.call(model, x, t, {**cond, "text_mask": torch.ones_like(mask)})
        assert not torch.allclose(unmasked[1], expected[1])  # the mask is passed on
    else:
        cond = {"text": kwargs["encoder_hidden_states"], "pooled": kwargs["pooled_projections"]}
        x = FluxPipeline._unpack_latents(kwargs["hidden_states"], 8 * 8, 8 * 8, 8)  # (2, 4, 8, 8)
        t = kwargs["timestep"] * 1000
        stock = model(**{**kwargs, "guidance": torch.full((2,), 3.5)}).sample
        expected = FluxPipeline._unpack_latents(stock, 8 * 8, 8 * 8, 8)
    assert conditioning.columns[0] == "text"
    plain = conditioning.call(model, x, t, cond)
    torch.testing.assert_close(plain, expected)
    prunable = make_prunable(model)
    torch.testing.assert_close(conditioning.gated(prunable, x, t, cond), expected)
    gates = prunable.dense_gates(2)
    gates[:, 0] = 0
    assert not torch.allclose(conditioning.gated(prunable, x, t, cond, gates), expected)
