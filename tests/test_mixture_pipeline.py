"""PromptRoutedPipeline as a diffusers pipeline: every call argument against a stock
StableDiffusionPipeline built from the same parts, save/load round trips, expert pipeline folders."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch

pytestmark = pytest.mark.usefixtures("single_thread")

PROMPTS = ["a red cube", "a big blue round ball on grass", "a cat", "one two three four five six"]
STEPS = dict(num_inference_steps=2, height=16, width=16)


class WordCountEncoder:
    def encode(self, prompts):
        return torch.tensor([[float(len(p.split()))] for p in prompts])


class LongPromptRouter:
    def route(self, z):
        return (z[:, 0] > 3).long()


def _gens(seeds):
    return [torch.Generator().manual_seed(s) for s in seeds]


@pytest.fixture(scope="module")
def mixture():
    from prunekit.pipeline import PromptRoutedPipeline
    from prunekit.tiny import build_tiny_pipeline
    from prunekit.unet import make_prunable, physically_prune

    base = build_tiny_pipeline(0)
    prunable = make_prunable(base.unet)
    g = torch.Generator().manual_seed(0)
    experts = [physically_prune(prunable, torch.rand(prunable.num_units, generator=g) > p).eval() for p in (0.6, 0.2)]
    prunable.restore()
    pipe = PromptRoutedPipeline.from_parts(base, WordCountEncoder(), LongPromptRouter(), experts)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _stock(pipe, expert, scheduler=None):
    from diffusers import StableDiffusionPipeline

    stock = StableDiffusionPipeline(vae=pipe.vae, text_encoder=pipe.text_encoder, tokenizer=pipe.tokenizer,
                                    unet=pipe.experts[expert], scheduler=scheduler or pipe.scheduler,
                                    safety_checker=None, feature_extractor=None, requires_safety_checker=False)
    stock.set_progress_bar_config(disable=True)
    return stock


def test_negative_prompts_images_per_prompt_and_generator_lists_split_per_image(mixture):
    negatives = ["blurry", "dark", "noisy", "ugly"]
    out = mixture(PROMPTS, negative_prompt=negatives, num_images_per_prompt=2, generator=_gens(range(8)),
                  output_type="np", **STEPS)
    assert out.images.shape == (8, 16, 16, 3)
    assert out.experts == [0, 0, 1, 1, 0, 0, 1, 1]
    for i, prompt in enumerate(PROMPTS):
        alone = _stock(mixture, out.experts[2 * i])(
            [prompt], negative_prompt=[negatives[i]], num_images_per_prompt=2, generator=_gens([2 * i, 2 * i + 1]),
            output_type="np", **STEPS).images
        np.testing.assert_allclose(out.images[2 * i:2 * i + 2], alone, atol=1e-6)


def test_one_generator_draws_the_batch_noise_like_a_single_pipeline(mixture):
    out = mixture(PROMPTS, generator=torch.Generator().manual_seed(3), experts=1, output_type="np", **STEPS)
    stock = _stock(mixture, 1)(PROMPTS, generator=torch.Generator().manual_seed(3), output_type="np", **STEPS)
    np.testing.assert_allclose(out.images, stock.images, atol=1e-6)
    # Mixed routing: each group gets its rows of that same noise (a deterministic sampler, so the step
    # noise the generator would also give a stochastic one does not enter).
    from diffusers import DDIMScheduler

    original = mixture.scheduler
    try:
        mixture.scheduler = DDIMScheduler.from_config(original.config)
        mixed = mixture(PROMPTS, generator=torch.Generator().manual_seed(3), output_type="latent", **STEPS)
        noise = torch.randn((4, 4, 8, 8), generator=torch.Generator().manual_seed(3))
        for i, prompt in enumerate(PROMPTS):
            alone = _stock(mixture, mixed.experts[i])([prompt], latents=noise[i:i + 1], output_type="latent", **STEPS)
            torch.testing.assert_close(mixed.images[i], alone.images[0], atol=1e-4, rtol=1e-4)
    finally:
        mixture.scheduler = original


def test_latents_negative_string_output_types_and_tuple_return(mixture):
    latents = torch.randn((4, 4, 8, 8), generator=torch.Generator().manual_seed(5))
    images, nsfw, experts = mixture(PROMPTS, negative_prompt="blurry", latents=latents, output_type="pt",
                                    generator=_gens(range(4)), return_dict=False, **STEPS)
    assert images.shape == (4, 3, 16, 16) and nsfw is None and experts == [0, 1, 0, 1]
    for i, prompt in enumerate(PROMPTS):
        alone = _stock(mixture, experts[i])([prompt], negative_prompt=["blurry"], latents=latents[i:i + 1],
                                            generator=_gens([i]), output_type="pt", **STEPS).images
        torch.testing.assert_close(images[i:i + 1], alone)
    pil = mixture(PROMPTS[:2], **STEPS).images
    assert len(pil) == 2 and pil[0].size == (16, 16)


def test_prompt_embeds_need_an_explicit_expert(mixture):
    stock = _stock(mixture, 1)
    embeds, negative = stock.encode_prompt(PROMPTS[:2], "cpu", 1, True)
    with pytest.raises(ValueError, match="routing needs the prompt text"):
        mixture(prompt_embeds=embeds, negative_prompt_embeds=negative, **STEPS)
    out = mixture(prompt_embeds=embeds, negative_prompt_embeds=negative, experts=1, generator=_gens([0, 1]),
                  output_type="np", **STEPS)
    alone = stock(prompt_embeds=embeds, negative_prompt_embeds=negative, generator=_gens([0, 1]), output_type="np",
                  **STEPS)
    np.testing.assert_allclose(out.images, alone.images, atol=1e-6)
    assert out.experts == [1, 1]


def test_callbacks_reach_every_group_and_a_new_scheduler_reaches_the_experts(mixture):
    from diffusers import DDIMScheduler

    seen = []

    def on_step(pipe, step, timestep, tensors):
        seen.append(step)
        return tensors

    mixture(PROMPTS, callback_on_step_end=on_step, output_type="np", **STEPS)
    assert seen == [0, 1, 0, 1]  # two expert groups, two steps each
    original = mixture.scheduler
    try:
        mixture.scheduler = DDIMScheduler.from_config(original.config)
        assert mixture.expert_pipeline(0).scheduler is mixture.scheduler
        out = mixture(PROMPTS[:1], generator=_gens([0]), output_type="np", **STEPS)
        alone = _stock(mixture, 0, DDIMScheduler.from_config(original.config))(
            PROMPTS[:1], generator=_gens([0]), output_type="np", **STEPS)
        np.testing.assert_allclose(out.images, alone.images, atol=1e-6)
    finally:
        mixture.scheduler = original


def test_bad_batch_arguments_are_refused_with_a_clear_line(mixture):
    cases = [
        (dict(negative_prompt=["a", "b"]), "negative_prompt has 2 entries for 4 prompts"),
        (dict(generator=_gens([0, 1])), "got 2 generators for 4 images"),
        (dict(seed=[1, 2, 3]), "got 3 seeds for 4 images"),
        (dict(experts=[0, 5, 0, 0]), "expert index 5 out of range"),
        (dict(latents=torch.zeros(3, 4, 8, 8)), "latents has 3 rows for 4 images"),
        (dict(seed=0, generator=torch.Generator()), "either `seed` or `generator`"),
    ]
    for kwargs, message in cases:
        with pytest.raises(ValueError, match=message.replace("[", r"\[")):
            mixture(PROMPTS, **kwargs, **STEPS)


def test_pipeline_plumbing(mixture):
    assert set(mixture.components) >= {"vae", "text_encoder", "tokenizer", "scheduler", "router", "experts"}
    assert mixture.device.type == "cpu" and mixture.dtype == torch.float32
    try:
        mixture.to("cpu", torch.float64)
        assert mixture.experts.dtype == torch.float64 and mixture.vae.dtype == torch.float64
        out = mixture(PROMPTS[:2], output_type="np", **STEPS)
        assert out.images.dtype == np.float32 or out.images.dtype == np.float64
    finally:
        mixture.to(dtype=torch.float32)
    mixture.enable_model_cpu_offload(device="cpu")
    try:
        assert mixture._execution_device == torch.device("cpu")
        offloaded = mixture(PROMPTS, generator=_gens(range(4)), output_type="np", **STEPS)
    finally:
        mixture._offload_device = None
    plain = mixture(PROMPTS, generator=_gens(range(4)), output_type="np", **STEPS)
    np.testing.assert_allclose(offloaded.images, plain.images, atol=1e-6)
    assert all(p.device.type == "cpu" for p in mixture.experts.parameters())


@pytest.fixture(scope="module")
def saveable(tmp_path_factory):
    """A mixture whose router is a real (registry-built) APTP router, so it can be saved."""
    from diffusers import StableDiffusionPipeline

    from prunekit.pipeline import PromptRoutedPipeline
    from prunekit.registry import get_registry
    from prunekit.tiny import save_tiny_pipeline
    from prunekit.unet import make_prunable, physically_prune

    registry = get_registry()
    # Loaded from disk like the round trip's copy: transformers picks the text encoder's attention
    # implementation at load time, and the images are compared bit for bit.
    base = StableDiffusionPipeline.from_pretrained(save_tiny_pipeline(tmp_path_factory.mktemp("base"), 1))
    prunable = make_prunable(base.unet)
    g = torch.Generator().manual_seed(1)
    experts = [physically_prune(prunable, torch.rand(prunable.num_units, generator=g) > p).eval() for p in (0.5, 0.1)]
    prunable.restore()
    encoder_section = {"name": "sentence_transformer"}
    router_section = {"name": "aptp", "num_codes": 2}
    dims = {"embed_dim": 384, "num_units": prunable.num_units}
    torch.manual_seed(0)
    router = registry.build("router", router_section, **dims).eval()
    encoder = registry.build("prompt_encoder", encoder_section)
    pipe = PromptRoutedPipeline.from_parts(base, encoder, router, experts, router_section=router_section,
                                           router_dims=dims, prompt_encoder_section=encoder_section)
    pipe.set_progress_bar_config(disable=True)
    folder = tmp_path_factory.mktemp("mixture") / "saved"
    pipe.save_pretrained(folder)
    return pipe, folder


def test_mixture_round_trips_through_save_and_from_pretrained(saveable):
    from prunekit.pipeline import PromptRoutedPipeline

    pipe, folder = saveable
    index = json.loads((folder / "model_index.json").read_text())
    assert index["_class_name"] == "PromptRoutedPipeline"
    assert index["router"] == ["prunekit", "PromptRouter"] and index["experts"] == ["prunekit", "ExpertUNets"]
    assert (folder / "experts" / "expert_01" / "diffusion_pytorch_model.safetensors").is_file()
    loaded = PromptRoutedPipeline.from_pretrained(folder)
    prompts = ["a dog", "a very long prompt about a red house by the sea", "x"]
    assert loaded.route(prompts) == pipe.route(prompts)
    a = pipe(prompts, generator=_gens(range(3)), output_type="np", **STEPS)
    b = loaded(prompts, generator=_gens(range(3)), output_type="np", **STEPS)
    np.testing.assert_array_equal(a.images, b.images)
    assert a.experts == b.experts


def test_an_expert_pipeline_folder_loads_with_diffusion_pipeline(saveable, tmp_path):
    from diffusers import DiffusionPipeline, StableDiffusionPipeline, UNet2DConditionModel

    from prunekit.unet import PrunedUNet2DConditionModel

    pipe, folder = saveable
    pipe.save_expert_pipeline(1, tmp_path / "expert1")
    index = json.loads((tmp_path / "expert1" / "model_index.json").read_text())
    assert index["unet"] == ["prunekit", "PrunedUNet2DConditionModel"]
    for loader in (DiffusionPipeline, StableDiffusionPipeline):
        alone = loader.from_pretrained(tmp_path / "expert1")
        alone.set_progress_bar_config(disable=True)
        assert isinstance(alone, StableDiffusionPipeline) and isinstance(alone.unet, PrunedUNet2DConditionModel)
        out = alone(["a dog"], generator=_gens([4]), output_type="np", **STEPS).images
        inside = pipe(["a dog"], experts=1, generator=_gens([4]), output_type="np", **STEPS).images
        np.testing.assert_allclose(out, inside, atol=1e-6)
    with pytest.raises(ValueError, match="load it with prunekit.PrunedUNet2DConditionModel"):
        UNet2DConditionModel.from_pretrained(folder / "experts" / "expert_00")
    with pytest.raises(FileExistsError):
        pipe.save_expert_pipeline(0, tmp_path / "expert1")
