"""The embedded DiT teacher (a tiny SD3-shaped pipeline on the embedded domain: the U-Net teacher's
trained VAE and CLIP, an SD3 transformer, flow matching) and the APTP story on it:
``recipes/aptp_tiny_dit.yaml`` on ``embedded_dit_random`` with iteration counts shrunk to about a
minute at one thread, and ``recipes/tiny/pretrain_dit.yaml`` shrunk to seconds."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import REPO, run_recipe
from safetensors import safe_open

pytestmark = pytest.mark.usefixtures("restore_threads")

APTP_DIT = REPO / "recipes" / "aptp_tiny_dit.yaml"
PRETRAIN_DIT = REPO / "recipes" / "tiny" / "pretrain_dit.yaml"
# The recipe on the random transformer: few iterations (a larger LR and small micro-batches, so the hard
# masks still reach the budget), 16 held-out prompts at 3 sampler steps, one latency round.
SHORT = ["model.name=embedded_dit_random", "engine.threads=1", "dataset.size=256", "eval.dataset.size=64",
         "eval.prompts=16", "eval.steps=3", "eval.batch_size=16", "eval.samples_per_expert=1",
         "metrics.latency.repeats=1", "method.prune.warmup_iters=20", "method.prune.iters=60",
         "method.prune.lr=0.05", "method.prune.lr_warmup=2", "method.prune.lr_cooldown=15",
         "method.prune.micro_batch=8", "method.finetune.iters=2", "method.finetune.micro_batch=8"]
STAGES = {"encode", "prune_warmup", "prune", "route", *(f"finetune_expert_{i}" for i in range(4)), "export",
          "evaluate"}
MB = 1_000_000


@pytest.fixture(scope="module")
def aptp_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("aptp_tiny_dit") / "run"
    _, metrics = run_recipe(APTP_DIT, SHORT, output=out)
    return out, metrics


def _shipped_clip_state():
    from prunekit_plugins.domain.teacher import SHIPPED_TEACHER

    with safe_open(str(SHIPPED_TEACHER / "text_encoder" / "model.safetensors"), framework="pt") as f:
        return {k.removeprefix("text_model."): f.get_tensor(k).float() for k in f.keys()}


def test_random_dit_teacher_is_sd3_shaped_small_and_reuses_the_trained_parts(tmp_path):
    from diffusers import FlowMatchEulerDiscreteScheduler, StableDiffusion3Pipeline
    from prunekit_plugins.domain.teacher_dit import (
        EmbeddedDiTConfig,
        EmbeddedDiTRandomConfig,
        build_embedded_dit,
        build_embedded_dit_random,
    )

    from prunekit.conditioning import SEQUENCE_LENGTH_KEY, call_kwargs, conditioning_for

    torch.set_num_threads(1)
    pipe = build_embedded_dit_random(EmbeddedDiTRandomConfig())
    assert isinstance(pipe, StableDiffusion3Pipeline) and isinstance(pipe.scheduler, FlowMatchEulerDiscreteScheduler)
    assert pipe.text_encoder_3 is None and pipe.tokenizer_3 is None
    assert pipe.vae.config.shift_factor == 0.0 and pipe.vae.config.latent_channels == 4
    assert pipe.transformer.config[SEQUENCE_LENGTH_KEY] == 0 and call_kwargs(pipe) == {"max_sequence_length": 0}
    # both CLIPs are the U-Net teacher's trained encoder with an identity projection
    shipped = _shipped_clip_state()
    for encoder in (pipe.text_encoder, pipe.text_encoder_2):
        state = encoder.text_model.state_dict()
        assert all(torch.equal(state[k], v) for k, v in shipped.items())
        assert torch.equal(encoder.text_projection.weight, torch.eye(128))
    # the CLIP tokens alone (16, the two encoders side by side: 256 wide), no zero tokens for T5
    cond = conditioning_for(pipe).encode(pipe, ["a red circle", "the number 42 in red"], [(32, 32)] * 2)
    assert cond["text"].shape == (2, 16, 256) and cond["pooled"].shape == (2, 256)

    # saved as the pretraining recipe saves it: float16, the recipe's shard size
    folder = tmp_path / "teacher_dit"
    pipe.to(torch.float16).save_pretrained(folder, safe_serialization=True, max_shard_size="6800KB")
    files = [f for f in folder.rglob("*") if f.is_file()]
    assert sum(f.stat().st_size for f in files) <= 20 * MB
    assert all(f.stat().st_size < 7 * MB for f in files)
    assert len(list((folder / "transformer").glob("*.safetensors"))) == 2
    loaded = build_embedded_dit(EmbeddedDiTConfig(path=str(folder)))
    assert loaded.transformer.dtype == torch.float32 and call_kwargs(loaded) == {"max_sequence_length": 0}
    assert loaded.vae.config.scaling_factor == pipe.vae.config.scaling_factor


def test_shipped_dit_teacher_is_small_loads_and_is_trained():
    """The shipped weights (recipes/tiny/pretrain_dit.yaml, copied to assets/teacher_dit): <= 20 MB, the
    random architecture, and trained: its flow-matching loss on domain samples is far below a random
    transformer's of the same architecture."""
    from prunekit_plugins.domain.dataset import EmbeddedDomain, EmbeddedDomainConfig
    from prunekit_plugins.domain.teacher_dit import (
        SHIPPED_DIT_TEACHER,
        EmbeddedDiTConfig,
        EmbeddedDiTRandomConfig,
        build_embedded_dit,
        build_embedded_dit_random,
    )

    from prunekit.conditioning import conditioning_for

    torch.set_num_threads(1)
    assert sum(f.stat().st_size for f in SHIPPED_DIT_TEACHER.rglob("*") if f.is_file()) <= 20 * MB
    provenance = json.loads((SHIPPED_DIT_TEACHER.parent / "teacher_dit_training.json").read_text())
    assert "recipes/tiny/pretrain_dit.yaml" in provenance["command"]
    assert EmbeddedDiTConfig().preflight() == []
    teacher = build_embedded_dit(EmbeddedDiTConfig())
    random = build_embedded_dit_random(EmbeddedDiTRandomConfig())
    for key in ("num_layers", "num_attention_heads", "attention_head_dim", "patch_size", "joint_attention_dim",
                "pooled_projection_dim", "caption_projection_dim", "sample_size"):
        assert teacher.transformer.config[key] == random.transformer.config[key], key

    data = EmbeddedDomain(EmbeddedDomainConfig(size=32, seed=3, split="heldout"))
    samples = [data[i] for i in range(32)]
    images = torch.stack([s["image"] for s in samples])
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        vae = teacher.vae
        x0 = (vae.encode(images).latent_dist.mean - vae.config.shift_factor) * vae.config.scaling_factor
        cond = conditioning_for(teacher).encode(teacher, [s["prompt"] for s in samples], [(32, 32)] * 32)
        noise = torch.randn(x0.shape, generator=generator)
        t = torch.rand(32, generator=generator)
        xt = (1 - t[:, None, None, None]) * x0 + t[:, None, None, None] * noise

        def loss(transformer):
            out = transformer(hidden_states=xt, timestep=t * 1000, encoder_hidden_states=cond["text"],
                              pooled_projections=cond["pooled"]).sample
            return float((out - (noise - x0)).pow(2).mean())

        trained, untrained = loss(teacher.transformer), loss(random.transformer)
    assert trained < 0.5 * untrained, (trained, untrained)


def test_untrained_dit_teacher_stops_with_one_line_naming_the_training_command(monkeypatch, tmp_path):
    from prunekit_plugins.domain import teacher_dit

    from prunekit.errors import MissingPathError

    monkeypatch.setattr(teacher_dit, "SHIPPED_DIT_TEACHER", tmp_path / "teacher_dit")
    config = teacher_dit.EmbeddedDiTConfig()
    problems = config.preflight()
    assert len(problems) == 1 and "\n" not in problems[0]
    assert "not trained yet" in problems[0] and "prunekit run recipes/tiny/pretrain_dit.yaml" in problems[0]
    with pytest.raises(MissingPathError, match="recipes/tiny/pretrain_dit.yaml"):
        teacher_dit.build_embedded_dit(config)
    objective = config.objective(local_files=True)
    assert objective is not None and objective.flow  # validate still refuses a DDPM sampler


def test_aptp_tiny_dit_completes_every_stage_with_experts_at_the_budget(aptp_run):
    out, metrics = aptp_run
    assert STAGES <= set(json.loads((out / "stages.json").read_text()))
    index = json.loads((out / "artifacts" / "encoded" / "index.json").read_text())
    assert index["shapes"]["text"] == [16, 256] and index["shapes"]["latents"] == [4, 16, 16]
    routing = metrics["routing"]
    assert sum(1 for c in routing["counts"] if c > 0) >= 2
    # held-out prompts are routed to at least two experts too
    by_category = metrics["mixture"]["generation"]["experts_by_category"]
    per_expert = [sum(column) for column in zip(*by_category.values())]
    assert sum(1 for n in per_expert if n > 0) >= 2
    target = routing["target"]
    assert target == 0.70
    assert abs(routing["mean_macs_ratio"] - target) < 0.08
    assert all(abs(r - target) < 0.2 for r in routing["macs_ratio"])
    # the mixture's measured MACs (at the trained text length) agree with the budget's MAC model
    assert metrics["mixture"]["metrics"]["macs_ratio"] == pytest.approx(routing["mean_macs_ratio"], abs=0.05)
    assert all(torch.isfinite(torch.tensor(e["final_loss"])) for e in metrics["experts"])
    assert (out / "report.html").is_file() and (out / "report" / "report.json").is_file()


def test_dit_mixture_experts_are_pruned_transformers_fed_clip_tokens_only(aptp_run):
    from prunekit.conditioning import SEQUENCE_LENGTH_KEY
    from prunekit.pipeline import PromptRoutedPipeline
    from prunekit.transformer import PrunedSD3Transformer2DModel

    out, _ = aptp_run
    pipe = PromptRoutedPipeline.from_pretrained(out / "artifacts" / "mixture")
    assert pipe.config["base_pipeline"] == "StableDiffusion3Pipeline"
    assert all(isinstance(e, PrunedSD3Transformer2DModel) and e.config[SEQUENCE_LENGTH_KEY] == 0 for e in pipe.experts)
    lengths: list[int] = []
    hooks = [e.register_forward_pre_hook(lambda m, a, kw: lengths.append(kw["encoder_hidden_states"].shape[1]),
                                         with_kwargs=True) for e in pipe.experts]
    try:
        result = pipe(["a red circle", "the number 42 in red"], seed=0, num_inference_steps=1, output_type="np")
    finally:
        for hook in hooks:
            hook.remove()
    assert result.images.shape == (2, 32, 32, 3)
    assert lengths and set(lengths) == {16}  # the experts' training text length, not diffusers' 16 + 256


def test_pretrain_dit_recipe_trains_the_transformer_alone(tmp_path):
    from prunekit_plugins.domain.teacher_dit import (
        EmbeddedDiTConfig,
        EmbeddedDiTRandomConfig,
        build_embedded_dit,
        build_embedded_dit_random,
    )

    out = tmp_path / "run"
    _, metrics = run_recipe(PRETRAIN_DIT, [
        "engine.threads=1", "model.num_layers=1", "dataset.size=24", "engine.micro_batch=4",
        "engine.checkpoint_every=2", "method.encode.batch_size=8", "method.steps=2", "method.warmup_steps=1",
        "method.max_shard_size=1MB"], output=out)
    assert metrics["finetune"]["steps"] == 2 and "vae" not in metrics
    assert torch.isfinite(torch.tensor(metrics["finetune"]["loss_last"]))
    folder = out / "artifacts" / "pipeline"
    assert len(list((folder / "transformer").glob("diffusion_pytorch_model-*.safetensors"))) > 1
    for weights in folder.rglob("*.safetensors"):
        with safe_open(str(weights), framework="pt") as f:
            assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())

    trained = build_embedded_dit(EmbeddedDiTConfig(path=str(folder)))
    initial = build_embedded_dit_random(EmbeddedDiTRandomConfig(num_layers=1))
    before = torch.cat([p.detach().half().float().flatten() for p in initial.transformer.parameters()])
    after = torch.cat([p.detach().flatten() for p in trained.transformer.parameters()])
    assert (after != before).float().mean() > 0.3  # the transformer trained
    for name in ("vae", "text_encoder", "text_encoder_2"):  # the trained parts stayed as they were
        frozen = dict(getattr(initial, name).state_dict())
        for key, value in getattr(trained, name).state_dict().items():
            assert torch.equal(value, frozen[key].half().float()), f"{name}.{key}"
