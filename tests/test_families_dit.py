"""The diffusion transformers with T5 text at pipeline level: PixArt-Sigma (T5 states + attention mask,
learned sigma) and Flux-dev (CLIP pooled + T5, 2x2-packed latent tokens with image ids, guidance
embedding, flow matching with dynamic shifting), on tiny random pipelines saved as local diffusers
folders (offline T5 tokenizers), through every stage of the APTP smoke recipe, then export → load →
``prunekit generate``."""

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

# Flux samples with its own flow-matching scheduler, at its embedded guidance 3.5 (what training
# conditions on); its pipeline's native size is 128 latents, so the tiny one generates at 32 px.
RUN = {"pixart": [], "flux": ["eval.scheduler=pipeline", "eval.resolution=32", "eval.guidance_scale=3.5"]}
# Keywords of a plain pipeline call that sample as the mixture does: PixArt's tiny native size has no
# resolution bins, and captions are used as encoded; Flux at the size it was evaluated at.
CALL = {"pixart": {"clean_caption": False, "use_resolution_binning": False}, "flux": {"height": 32, "width": 32}}
BASE = {"pixart": "PixArtSigmaPipeline", "flux": "FluxPipeline"}
# What the encode stage stores: PixArt's 300 T5 tokens and their mask; Flux's 512 T5 tokens and the
# pooled CLIP state; VAE latents of the 32 px images (Flux's 16 channels unpacked: packing is per call).
SHAPES = {"pixart": {"text": [300, 32], "text_mask": [300], "latents": [4, 16, 16]},
          "flux": {"text": [512, 32], "pooled": [16], "latents": [16, 16, 16]}}


def _build(family):
    from prunekit import tiny

    pipe = {"pixart": tiny.build_tiny_pixart_pipeline, "flux": tiny.build_tiny_flux_pipeline}[family](0)
    pipe.set_progress_bar_config(disable=True)
    return pipe


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from prunekit.tiny import save_tiny_family

    root = tmp_path_factory.mktemp("dit_families")
    return {family: save_tiny_family(family, root / family) for family in ("pixart", "flux")}


@pytest.fixture(scope="module")
def runs(folders, tmp_path_factory):
    """Each family's smoke run, made on first use: ``{family: (run dir, metrics)}``."""
    done = {}

    def get(family):
        if family not in done:
            out = tmp_path_factory.mktemp(family) / "run"
            _, metrics = run_recipe(SMOKE, [*FAST, *PRUNING, *RUN[family], f"model.path={folders[family]}"],
                                    output=out)
            done[family] = (out, metrics)
        return done[family]

    return get


# -- the pieces -----------------------------------------------------------------------------------------

def test_t5_tokenizer_is_built_offline_and_reloads_from_its_folder(tmp_path):
    from transformers import AutoTokenizer

    from prunekit.tiny import build_tiny_t5_tokenizer

    tokenizer = build_tiny_t5_tokenizer(16)
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path, local_files_only=True)
    assert type(loaded).__name__.startswith("T5Tokenizer")
    batch = loaded(["a red square", "Ünïcode ~ and 123"], padding="max_length", max_length=16, truncation=True,
                   return_tensors="pt")
    assert batch.input_ids.tolist() == tokenizer(["a red square", "Ünïcode ~ and 123"], padding="max_length",
                                                 max_length=16, truncation=True, return_tensors="pt").input_ids.tolist()
    first = batch.input_ids[0].tolist()
    assert first.index(loaded.eos_token_id) == int(batch.attention_mask[0].sum()) - 1  # "</s>" ends the text
    assert first[-1] == loaded.pad_token_id and loaded.unk_token_id in batch.input_ids[1].tolist()
    assert loaded.decode(first, skip_special_tokens=True) == "a red square"


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_training_call_equals_what_the_pipeline_feeds_its_transformer(family):
    """The encoded columns and ``Conditioning.call`` on unpacked latents give the prediction the pipeline's
    own denoising loop gets (PixArt: T5 mask, first half of the learned-sigma output; Flux: packed tokens
    and ids, timesteps / 1000, guidance 3.5)."""
    from diffusers import FluxPipeline

    from prunekit.conditioning import conditioning_for

    pipe = _build(family)
    model = pipe.transformer
    seen = []
    hook = model.register_forward_hook(lambda m, args, kwargs, out: seen.append((args, kwargs, out[0])),
                                       with_kwargs=True)
    prompt = "a red square"
    try:
        if family == "pixart":  # guidance 1: no unconditional half in the batch
            pipe(prompt, num_inference_steps=2, guidance_scale=1.0, output_type="latent", height=32, width=32,
                 generator=torch.Generator().manual_seed(0), **CALL["pixart"])
        else:
            pipe(prompt, num_inference_steps=2, guidance_scale=3.5, output_type="latent", height=32, width=32,
                 generator=torch.Generator().manual_seed(0))
    finally:
        hook.remove()
    args, kwargs, out = seen[-1]
    conditioning = conditioning_for(pipe)
    assert conditioning.family == family
    cond = conditioning.encode(pipe, [prompt], [(32, 32)])
    assert {k: list(v.shape[1:]) for k, v in cond.items()} == {k: v for k, v in SHAPES[family].items()
                                                              if k != "latents"}
    if family == "pixart":
        x, t = args[0], kwargs["timestep"]
        expected = out[:, :4]
        assert torch.equal(cond["text_mask"], kwargs["encoder_attention_mask"].cpu())
    else:
        x = FluxPipeline._unpack_latents(kwargs["hidden_states"], 32, 32, pipe.vae_scale_factor)
        t = kwargs["timestep"] * 1000
        expected = FluxPipeline._unpack_latents(out, 32, 32, pipe.vae_scale_factor)
        assert float(kwargs["guidance"][0]) == 3.5
    assert x.shape[1:] == (SHAPES[family]["latents"][0], 16, 16)
    with torch.no_grad():
        torch.testing.assert_close(conditioning.call(model, x, t, cond), expected, rtol=1e-4, atol=1e-5)


# -- end to end -----------------------------------------------------------------------------------------

@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_aptp_smoke_prunes_and_completes_every_stage(family, runs):
    out, metrics = runs(family)
    assert expected_stages() <= set(stages(out))
    index = json.loads((out / "artifacts" / "encoded" / "index.json").read_text())
    for column, shape in SHAPES[family].items():
        assert index["shapes"][column] == shape, column
    for phase in ("warmup", "joint"):
        assert torch.isfinite(torch.tensor(metrics["prune"][phase]["final_loss"]))
    assert all(torch.isfinite(torch.tensor(e["final_loss"])) for e in metrics["experts"])
    ratios = metrics["routing"]["macs_ratio"]
    assert min(ratios) < 0.95  # the resource loss pruned: experts are smaller than the teacher
    assert abs(metrics["routing"]["mean_macs_ratio"] - 0.6) < 0.15
    # measured on the exported experts: every one at most, and the routed mean below, the teacher's MACs
    measured = metrics["mixture"]["metrics"]
    teacher = measured["macs_teacher"]
    assert teacher > 0 and measured["macs"] < 0.95 * teacher
    assert all(measured[f"macs_expert_{i:02d}"] <= teacher for i in range(4))
    manifest = json.loads((out / "artifacts" / "mixture" / "manifest.json").read_text())
    assert manifest["text_len"] == SHAPES[family]["text"][0]
    report = json.loads((out / "report" / "report.json").read_text())
    # PixArt's blocks; Flux's double-stream then single-stream blocks
    assert report["architecture"]["labels"] == {"pixart": ["T0", "T1"], "flux": ["T0", "T1", "S0", "S1"]}[family]


@pytest.mark.parametrize("family", ["pixart", "flux"])
def test_mixture_loads_pruned_transformers_and_generates(family, runs, tmp_path):
    from PIL import Image

    from prunekit.transformer import PrunedFluxTransformer2DModel, PrunedPixArtTransformer2DModel

    out, _ = runs(family)
    mixture = out / "artifacts" / "mixture"
    pipe = routed_images_equal_their_expert_alone(mixture, BASE[family], **CALL[family])
    pruned = {"pixart": PrunedPixArtTransformer2DModel, "flux": PrunedFluxTransformer2DModel}[family]
    assert all(isinstance(e, pruned) for e in pipe.experts)
    assert any("0" in e.pruning["mask"] for e in pipe.experts)
    if family == "flux":
        assert pipe.text_encoder_2 is not None and pipe.tokenizer_2 is not None
    # One generator for the batch: the noise is drawn as one pipeline call draws it (Flux: packed).
    first = pipe(PROMPTS, generator=torch.Generator().manual_seed(0), experts=1, num_inference_steps=2,
                 output_type="np", **CALL[family]).images
    alone = pipe.expert_pipeline(1)(PROMPTS, generator=torch.Generator().manual_seed(0), num_inference_steps=2,
                                    output_type="np", **CALL[family]).images
    assert abs(first - alone).max() < 1e-5
    size = ["--height", "32", "--width", "32"] if family == "flux" else []
    result = run_cli("generate", str(mixture), *PROMPTS[:2], "--steps", "2", *size, "-o", str(tmp_path / "png"))
    assert result.returncode == 0, result.stderr
    pngs = sorted((tmp_path / "png").glob("*.png"))
    assert len(pngs) == 2
    side = 32 if family == "flux" else pipe.default_size  # PixArt: its native 16 px
    assert Image.open(pngs[0]).size == (side, side)
