"""Saving, loading and using pruned experts."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from unet_helpers import TINY_SD2, TINY_SDXL, block_dropping_mask, build_unet, inputs, zero_width_mask

from prunekit.unet import (
    PrunedUNet2DConditionModel,
    load_expert,
    make_prunable,
    physically_prune,
    read_expert_spec,
    round_mask,
    save_expert,
)

pytestmark = pytest.mark.usefixtures("single_thread")


@pytest.fixture(scope="module")
def expert(tmp_path_factory):
    prunable = make_prunable(build_unet(TINY_SD2))
    mask = block_dropping_mask(prunable, 7)
    pruned = physically_prune(prunable, mask).eval()
    folder = tmp_path_factory.mktemp("experts") / "expert0"
    save_expert(pruned, mask, folder, metadata={"budget": 0.5})
    return prunable, mask, pruned, folder


def test_save_load_roundtrip(expert):
    prunable, mask, pruned, folder = expert
    assert sorted(p.name for p in folder.iterdir()) == ["config.json", "diffusion_pytorch_model.safetensors"]
    config, spec = read_expert_spec(folder)
    assert spec.mask == tuple(bool(m) for m in mask) and spec.depth == prunable.inventory.depth
    assert spec.metadata == {"budget": 0.5} and config["block_out_channels"] == [32, 64]
    loaded = load_expert(folder)
    assert not loaded.training and isinstance(loaded, PrunedUNet2DConditionModel)
    args, kwargs = inputs(TINY_SD2)
    with torch.no_grad():
        assert torch.equal(loaded(*args, **kwargs).sample, pruned(*args, **kwargs).sample)
        gated = prunable(*args, gates=mask.float(), **kwargs).sample
    torch.testing.assert_close(loaded(*args, **kwargs).sample, gated, atol=1e-4, rtol=0)
    half = load_expert(folder, dtype=torch.float64)
    assert next(half.parameters()).dtype == torch.float64


def test_round_to_and_zero_width_and_sdxl_experts_roundtrip(tmp_path):
    for config, seed in ((TINY_SD2, 1), (TINY_SDXL, 2)):
        prunable = make_prunable(build_unet(config))
        mask = round_mask(prunable, zero_width_mask(prunable, seed), 8)
        pruned = physically_prune(prunable, mask)
        folder = tmp_path / f"e{seed}"
        save_expert(pruned, mask, folder, round_to=8)
        loaded = load_expert(folder)
        args, kwargs = inputs(config)
        with torch.no_grad():
            assert torch.equal(loaded(*args, **kwargs).sample, pruned(*args, **kwargs).sample)
        assert read_expert_spec(folder)[1].round_to == 8
        prunable.restore()


def test_overwrite_is_refused_unless_asked(expert, tmp_path):
    _, mask, pruned, folder = expert
    with pytest.raises(FileExistsError):
        save_expert(pruned, mask, folder)
    other = tmp_path / "notes"
    other.mkdir()
    (other / "readme.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        save_expert(pruned, mask, other)
    save_expert(pruned, mask, other, overwrite=True)
    assert (other / "readme.txt").read_text() == "keep me"
    load_expert(other)


def test_strict_loading_rejects_tampered_weights(expert, tmp_path):
    _, mask, pruned, folder = expert
    weights = load_file(str(folder / "diffusion_pytorch_model.safetensors"))
    cases = {
        "missing": {k: v for k, v in weights.items() if k != "conv_in.weight"},
        "unexpected": {**weights, "extra.weight": torch.zeros(2)},
        "wrong shape": {**weights, "down_blocks.0.resnets.0.conv1.weight":
                        weights["down_blocks.0.resnets.0.conv1.weight"][:-1].clone()},
    }
    for label, state in cases.items():
        bad = tmp_path / label.replace(" ", "_")
        save_expert(pruned, mask, bad)
        save_file(state, str(bad / "diffusion_pytorch_model.safetensors"))
        with pytest.raises(ValueError, match=label):
            load_expert(bad)
    # a mask that no longer matches the weights is caught the same way
    bad = tmp_path / "mask"
    save_expert(pruned, mask, bad)
    config = json.loads((bad / "config.json").read_text())
    mask_bits = config["pruning"]["mask"]
    config["pruning"]["mask"] = ("0" if mask_bits[0] == "1" else "1") + mask_bits[1:]
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="does not match pruning.mask"):
        load_expert(bad)
    del config["pruning"]["kept"], config["pruning"]["dropped_blocks"]  # no summary to contradict it
    (bad / "config.json").write_text(json.dumps(config))
    with pytest.raises(ValueError, match="wrong shape"):
        load_expert(bad)
    # saving weights that do not fit the mask fails before anything is written
    with pytest.raises(ValueError, match="does not match the mask"):
        save_expert(pruned, torch.ones_like(mask), tmp_path / "never")
    assert not (tmp_path / "never").exists()


def _tiny_pipeline(unet):
    from diffusers import AutoencoderKL, DDIMScheduler, StableDiffusionPipeline
    from transformers import CLIPTextConfig, CLIPTextModel, CLIPTokenizer

    torch.manual_seed(0)
    vae = AutoencoderKL(block_out_channels=(32, 64), in_channels=3, out_channels=3, latent_channels=4,
                        down_block_types=("DownEncoderBlock2D",) * 2, up_block_types=("UpDecoderBlock2D",) * 2,
                        sample_size=32)
    letters = "abcdefghijklmnopqrstuvwxyz"
    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1, "!": 2}
    for ch in letters:
        vocab[ch] = len(vocab)
        vocab[ch + "</w>"] = len(vocab)
    vocab["ca"] = len(vocab)
    tokenizer = CLIPTokenizer(vocab=vocab, merges=[("c", "a")], model_max_length=77, pad_token="!")
    text_encoder = CLIPTextModel(CLIPTextConfig(hidden_size=32, intermediate_size=37, num_attention_heads=4,
                                                num_hidden_layers=2, vocab_size=len(vocab) + 1,
                                                max_position_embeddings=77, projection_dim=32))
    return StableDiffusionPipeline(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, unet=unet,
                                   scheduler=DDIMScheduler(), safety_checker=None, feature_extractor=None,
                                   requires_safety_checker=False)


def test_loaded_expert_generates_in_a_stock_pipeline(expert):
    _, _, _, folder = expert
    pipe = _tiny_pipeline(load_expert(folder))
    out = pipe(["a red cube", "a cat"], num_inference_steps=2, height=32, width=32, output_type="np",
               generator=torch.Generator().manual_seed(0))
    images = out.images
    assert images.shape == (2, 32, 32, 3) and np.isfinite(images).all()
    assert images.std() > 0


def test_diffusers_loader_reads_an_expert_and_a_stock_class_refuses_it(expert):
    from diffusers import UNet2DConditionModel

    prunable, mask, pruned, folder = expert
    loaded = PrunedUNet2DConditionModel.from_pretrained(folder)
    args, kwargs = inputs(TINY_SD2)
    with torch.no_grad():
        assert torch.equal(loaded(*args, **kwargs).sample, pruned(*args, **kwargs).sample)
    # The config records what was cut, readably, and the dense config it was cut from.
    pruning = loaded.config.pruning
    assert pruning["mask"] == "".join("1" if m else "0" for m in mask.tolist())
    assert pruning["dropped_blocks"] and pruning["kept"]
    assert loaded.config.block_out_channels == (32, 64) or list(loaded.config.block_out_channels) == [32, 64]
    for kwargs_ in ({}, {"ignore_mismatched_sizes": True, "low_cpu_mem_usage": False}):
        with pytest.raises(ValueError, match="load it with prunekit.PrunedUNet2DConditionModel"):
            UNet2DConditionModel.from_pretrained(folder, **kwargs_)


def test_save_pretrained_round_trip_and_fresh_construction(expert, tmp_path):
    _, mask, pruned, _ = expert
    pruned.save_pretrained(tmp_path / "sp")
    again = PrunedUNet2DConditionModel.from_pretrained(tmp_path / "sp")
    for (k, a), (k2, b) in zip(pruned.state_dict().items(), again.state_dict().items()):
        assert k == k2 and torch.equal(a, b)
    # Built from its config alone it has the pruned shapes with PyTorch's default initialisation.
    fresh = PrunedUNet2DConditionModel.from_config(pruned.config)
    assert {k: v.shape for k, v in fresh.state_dict().items()} == {k: v.shape for k, v in pruned.state_dict().items()}
    assert all(torch.isfinite(v).all() for v in fresh.state_dict().values())
    with pytest.raises(ValueError, match="already pruned"):
        physically_prune(pruned, torch.ones(len(mask), dtype=torch.bool))


def test_first_format_experts_still_load(expert, tmp_path):
    """Folders written before the diffusers format (expert.json + model.safetensors) load unchanged."""
    prunable, mask, pruned, _ = expert
    legacy = tmp_path / "legacy"
    legacy.mkdir()
    (legacy / "config.json").write_text(json.dumps({"_class_name": "UNet2DConditionModel",
                                                   **{k: v for k, v in TINY_SD2.items()}}, default=list))
    (legacy / "expert.json").write_text(json.dumps({
        "format": "prunekit.unet.expert", "version": 1, "class_name": "UNet2DConditionModel",
        "num_units": len(mask), "kept_units": int(mask.sum()), "mask": [int(m) for m in mask],
        "depth": list(prunable.inventory.depth), "ffn_groups": prunable.inventory.ffn_groups,
        "round_to": None, "metadata": {}}))
    save_file({k: v.contiguous() for k, v in pruned.state_dict().items()}, str(legacy / "model.safetensors"))
    loaded = load_expert(legacy)
    args, kwargs = inputs(TINY_SD2)
    with torch.no_grad():
        assert torch.equal(loaded(*args, **kwargs).sample, pruned(*args, **kwargs).sample)
