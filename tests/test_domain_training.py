"""The domain's training recipes, shrunk to seconds: pre-training a teacher (autoencoder, text encoder
and U-Net through ``dense_finetune``) and training the classifier."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import run_cli
from safetensors import safe_open

TINY_TEACHER = [
    "model.block_out_channels=[32,64]", "model.attention_heads=[2,2]", "model.cross_attention_dim=32",
    "model.text_layers=1", "model.text_heads=2", "model.vae_channels=[16,32]",
    "dataset.size=24", "engine.micro_batch=4", "engine.checkpoint_every=2", "method.encode.batch_size=8",
    "method.steps=2", "method.vae_steps=2", "method.warmup_steps=1", "method.max_shard_size=200KB",
]


def test_pretrain_recipe_trains_autoencoder_text_encoder_and_unet(tmp_path):
    from prunekit_plugins.domain.teacher import (
        EmbeddedConfig,
        EmbeddedRandomConfig,
        build_embedded,
        build_embedded_random,
    )

    out = tmp_path / "run"
    args = ["run", "recipes/tiny/pretrain.yaml", "--output", str(out), *TINY_TEACHER]
    result = run_cli(*args)
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["vae"]["steps"] == 2 and metrics["finetune"]["steps"] == 2
    assert metrics["vae"]["scaling_factor"] > 0 and "held_out_psnr" in metrics["vae"]

    folder = out / "artifacts" / "pipeline"
    shards = sorted((folder / "unet").glob("diffusion_pytorch_model-*.safetensors"))
    assert len(shards) > 1  # max_shard_size split the U-Net
    for weights in (folder / "vae").glob("*.safetensors"):
        with safe_open(str(weights), framework="pt") as f:
            assert all(f.get_tensor(k).dtype == torch.float16 for k in f.keys())  # save_dtype: float16

    trained = build_embedded(EmbeddedConfig(path=str(folder)))
    assert all(p.dtype == torch.float32 for p in trained.unet.parameters())
    assert trained.vae.config.scaling_factor == pytest.approx(metrics["vae"]["scaling_factor"])
    init_options = {"block_out_channels": [32, 64], "attention_heads": [2, 2], "cross_attention_dim": 32,
                    "text_layers": 1, "text_heads": 2, "vae_channels": [16, 32]}
    initial = build_embedded_random(EmbeddedRandomConfig(**init_options))
    for name in ("text_encoder", "vae", "unet"):  # every part moved away from its (fp16-rounded) initialisation
        before = torch.cat([p.detach().half().float().flatten() for p in getattr(initial, name).parameters()])
        after = torch.cat([p.detach().flatten() for p in getattr(trained, name).parameters()])
        assert (after != before).float().mean() > 0.3, name


def test_classifier_recipe_trains_and_scores_itself(tmp_path):
    from prunekit_plugins.domain.classifier import load_classifier

    out = tmp_path / "run"
    result = run_cli("run", "recipes/tiny/domain_classifier.yaml", "--output", str(out), "method.steps=3",
                     "dataset.size=64", "method.eval_size=32", "engine.micro_batch=16", "method.widths=[8,16,16]")
    assert result.returncode == 0, result.stderr
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train"]["steps"] == 3 and 0.0 <= metrics["evaluate"]["alignment"] <= 1.0
    assert set(metrics["evaluate"]["field_accuracy"]) == {"axis", "kind0", "color0", "size0", "kind1", "color1", "size1"}
    model = load_classifier(out / "artifacts" / "classifier")
    assert model.config["widths"] == [8, 16, 16]
    assert model.features(torch.zeros(2, 3, 32, 32, dtype=torch.uint8)).shape == (2, model.num_features)
