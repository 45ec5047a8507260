"""The baselines (norm, uni_arch) and the post-training methods (magnitude, Wanda, SparseGPT, OWL) on
the pipeline families beyond SD 1.x / 2.x: SDXL (two CLIPs), SD3 (two CLIPs, MMDiT, flow matching),
Flux (CLIP + T5, packed latent tokens, embedded guidance) and PixArt-Sigma (T5), on tiny random
pipelines saved as local diffusers folders, end to end through the runner (prune, export / save,
evaluate)."""

from __future__ import annotations

import json

import pytest
import torch
from family_helpers import FAST, PROMPTS, stages
from helpers import POSTTRAIN_RECIPES, TINY_RECIPES, run_recipe

pytestmark = pytest.mark.usefixtures("restore_threads")

FAMILIES = ("sdxl", "sd3", "flux", "pixart")
# What each family's runs add: SD3's folder has no T5; SD3 and Flux sample with their own flow-matching
# scheduler, Flux at 32 px with its embedded guidance 3.5.
MODEL = {"sdxl": [], "pixart": [],
         "sd3": ["model.without=[text_encoder_3,tokenizer_3]", "eval.scheduler=pipeline"],
         "flux": ["eval.scheduler=pipeline", "eval.resolution=32", "eval.guidance_scale=3.5"]}
PRUNED_CLASS = {"sdxl": "PrunedUNet2DConditionModel", "sd3": "PrunedSD3Transformer2DModel",
                "flux": "PrunedFluxTransformer2DModel", "pixart": "PrunedPixArtTransformer2DModel"}
# The denoiser's attribute and the text encoders each family's pipeline prunes, in pruning order.
COMPONENTS = {"sdxl": ["unet", "text_encoder", "text_encoder_2"],
              "sd3": ["transformer", "text_encoder", "text_encoder_2"],
              "flux": ["transformer", "text_encoder", "text_encoder_2"],  # CLIP, T5
              "pixart": ["transformer", "text_encoder"]}  # T5
# Keywords of a plain pipeline call that generate the way the runs calibrate / evaluate.
CALL = {"sdxl": {}, "sd3": {}, "flux": {"height": 32, "width": 32},
        "pixart": {"clean_caption": False, "use_resolution_binning": False}}
GUIDANCE = {"sdxl": 7.5, "sd3": 7.5, "pixart": 4.5, "flux": 3.5}
# Small and quick: 8 samples of 32 px (16x16 latents), one fine-tuning step, one evaluation step.
BASELINE = [*FAST, "dataset.size=8", "dataset.resolution=32", "engine.micro_batch=4", "budget.target=0.6",
            "method.finetune.iters=1", "eval.steps=1", "eval.prompts=2"]
# The post-training recipes' sparsities: the text encoders', and the denoiser's under `unet` (SDXL); the
# transformers' runs set theirs under the family-neutral `denoiser` instead.
TEXT = 0.475
DENOISER = {"sdxl": 0.35, "sd3": 0.4, "flux": 0.4, "pixart": 0.4}
# The latent stem and head every denoiser leaves dense by default.
STEM_AND_HEAD = {"sdxl": ["conv_in", "conv_out"], "sd3": ["pos_embed.proj", "proj_out"],
                 "flux": ["x_embedder", "proj_out"], "pixart": ["pos_embed.proj", "proj_out"]}


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    from prunekit.tiny import save_tiny_family

    root = tmp_path_factory.mktemp("baseline_families")
    return {family: save_tiny_family(family, root / family) for family in FAMILIES}


def load_pipeline(folder, family):
    """The saved folder through stock diffusers (SD3 saved without T5 says so, as diffusers asks)."""
    from diffusers import DiffusionPipeline

    without = {"text_encoder_3": None, "tokenizer_3": None} if family == "sd3" else {}
    pipe = DiffusionPipeline.from_pretrained(folder, local_files_only=True, **without)
    pipe.set_progress_bar_config(disable=True)
    return pipe


def generate(pipe, family, steps=1):
    images = pipe(PROMPTS[0], num_inference_steps=steps, guidance_scale=GUIDANCE[family], output_type="np",
                  generator=torch.Generator().manual_seed(0), **CALL[family]).images
    assert images.shape[0] == 1 and images.shape[-1] == 3 and bool(torch.isfinite(torch.as_tensor(images)).all())
    return images


# -- norm and uni_arch -------------------------------------------------------------------------------

def test_unit_norms_are_the_weights_physical_pruning_removes_in_every_transformer():
    """A unit's L1 norm sums exactly the matrix weights physically pruning it removes: joint-attention
    heads (both streams, SD3's context_pre_only block), PixArt's self / cross heads and GELU FFNs, Flux's
    single-block heads and MLP groups (their columns of the shared proj_out), whole blocks."""
    from prunekit_plugins.baselines.unit_norms import unit_l1_norms

    from prunekit.conditioning import denoiser_of
    from prunekit.denoisers import make_prunable, physically_prune
    from prunekit.tiny import TINY_FAMILIES

    def matrices(model):
        weights = [p.detach().double() for p in model.parameters() if p.ndim >= 2]
        return sum(float(w.abs().sum()) for w in weights), sum(w.numel() for w in weights)

    for family in ("sd3", "flux", "pixart"):
        prunable = make_prunable(denoiser_of(TINY_FAMILIES[family](0)))
        l1, params = unit_l1_norms(prunable)
        dense_l1, dense_n = matrices(prunable.model)
        kinds = set()
        for layer in prunable.inventory.layers:
            unit = layer.start + layer.count - 1  # the layer's last unit: its slices end where the next begin
            mask = torch.ones(prunable.num_units, dtype=torch.bool)
            mask[unit] = False
            pruned_l1, pruned_n = matrices(physically_prune(prunable, mask))
            assert dense_l1 - pruned_l1 == pytest.approx(float(l1[unit]), rel=1e-6), (family, layer.path)
            assert dense_n - pruned_n == int(params[unit]), (family, layer.path)
            kinds.add(layer.kind)
        assert kinds == {"attn_head", "ffn_group", "depth_transformer"}, family


@pytest.mark.parametrize("family", FAMILIES)
def test_norm_meets_the_mac_budget_and_exports_a_loadable_pruned_model(family, folders, tmp_path):
    from prunekit.denoisers import load_expert, measure_macs
    from prunekit.pipeline import PromptRoutedPipeline

    out = tmp_path / "norm"
    _, metrics = run_recipe(TINY_RECIPES / "norm.yaml", [*BASELINE, *MODEL[family], f"model.path={folders[family]}"],
                            output=out)
    assert list(stages(out)) == ["encode", "select", "finetune_expert_0", "export", "evaluate"]
    ratio = metrics["selection"]["macs_ratio"]
    assert 0.6 * 0.99 <= ratio <= 0.6, ratio  # within 1 % of the budget, never over it
    scores = json.loads((out / "artifacts" / "unit_scores.json").read_text())
    assert 0 < sum(scores["kept"]) < len(scores["kept"])
    # the exported expert is the selected architecture: its measured MACs are the budget's count
    model = metrics["model"]
    assert model["format"] == f"diffusers.{PRUNED_CLASS[family]}"
    expert = load_expert(model["path"])
    assert type(expert).__name__ == PRUNED_CLASS[family]
    manifest = json.loads((out / "artifacts" / "mixture" / "manifest.json").read_text())
    height, width = manifest["latent_size"]
    measured = measure_macs(expert, height=height, width=width, text_len=manifest["text_len"])
    assert measured == pytest.approx(model["macs"], rel=1e-6)
    assert measured / model["dense_macs"] == pytest.approx(ratio, rel=1e-6)
    # evaluated against the dense teacher at the same text length, and it generates on its own
    assert metrics["teacher"]["metrics"]["macs"] == metrics["mixture"]["metrics"]["macs_teacher"]
    assert metrics["mixture"]["metrics"]["macs_ratio"] < 0.8
    pipe = PromptRoutedPipeline.from_pretrained(metrics["mixture"]["path"])
    result = pipe(PROMPTS[:2], num_inference_steps=1, output_type="np", **CALL[family])
    assert result.experts == [0, 0] and len(result.images) == 2


@pytest.mark.parametrize("family", FAMILIES)
def test_uni_arch_trains_one_code_and_exports_it(family, folders, tmp_path):
    from prunekit.denoisers import load_expert

    out = tmp_path / "uni"
    _, metrics = run_recipe(TINY_RECIPES / "uni_arch.yaml",
                            [*BASELINE, *MODEL[family], f"model.path={folders[family]}", "method.prune.iters=3",
                             "eval.prompts=1"], output=out)
    assert list(stages(out)) == ["encode", "prune_warmup", "prune", "route", "finetune_expert_0", "export",
                                 "evaluate"]
    history = json.loads((out / "artifacts" / "prune_joint_history.json").read_text())
    assert len(history) == 3 and all(torch.isfinite(torch.tensor(h["loss"])) for h in history)
    assert metrics["routing"]["counts"] == [8]
    assert 0.6 * 0.99 <= metrics["routing"]["mean_macs_ratio"] <= 0.6  # finalize: budget
    expert = load_expert(metrics["model"]["path"])
    assert type(expert).__name__ == PRUNED_CLASS[family]


# -- post-training ---------------------------------------------------------------------------------------

def _calibration(family):
    """The calibration every test run uses: the recipe's first 2 prompts in one batch, 2 steps."""
    size = {"height": 32, "width": 32} if family == "flux" else {}
    return {"prompts": 2, "steps": 2, "guidance_scale": GUIDANCE[family], "seed": 0, "batch_size": 2, **size}


def _overrides(folder, family, method):
    out = ["model.name=diffusers_sd", f"model.path={folder}", "eval.scheduler=pipeline"]
    if family == "sd3":
        out.append("model.without=[text_encoder_3,tokenizer_3]")
    if family != "sdxl":  # the family-neutral name of the denoiser's section
        out += ["method.unet=null", f"method.denoiser={{sparsity: {DENOISER[family]}}}"]
    if method != "magnitude":
        cal = ", ".join(f"{k}: {v}" for k, v in _calibration(family).items())
        out.append(f"method.calibration={{{cal}}}")
    if method == "sparsegpt":
        out.append("method.sequential=false")  # one dense pass, reproduced below; sequential: its own test
    return out


@pytest.fixture(scope="module")
def reference(folders):
    """Per family, what calibration must have recorded, obtained independently of prunekit's feeds: the
    dense pipeline called the way generation calls it (prompts, guidance, seed, Flux's size), with every
    prunable layer of the denoiser and the text encoders hooked. ``(dense pipeline, {component: {layer:
    (input norms, Hessian)}})``, in each layer's pruning column order."""
    from prunekit_plugins.posttrain.config import DENOISER_EXCLUDE
    from prunekit_plugins.posttrain.layers import select_layers

    from prunekit.calibration import capture_inputs

    cache = {}

    def get(family):
        if family in cache:
            return cache[family]
        pipe = load_pipeline(folders[family], family)
        cal = _calibration(family)
        layers = {c: select_layers(getattr(pipe, c), DENOISER_EXCLUDE if i == 0 else ())
                  for i, c in enumerate(COMPONENTS[family])}
        modules = {f"{c}/{layer.name}": layer.module for c, group in layers.items() for layer in group}
        size = {k: cal[k] for k in ("height", "width") if k in cal}
        with capture_inputs(modules, "norms") as norms, capture_inputs(modules, "hessian") as hessians:
            pipe(["a red circle on a white background", "a small blue square next to a green triangle"],
                 num_inference_steps=cal["steps"], guidance_scale=cal["guidance_scale"],
                 generator=torch.Generator().manual_seed(cal["seed"]), output_type="latent",
                 **{**CALL[family], **size})
        stats = {c: {layer.name: (layer.reorder_statistic(norms[f"{c}/{layer.name}"].result()),
                                  layer.reorder_statistic(hessians[f"{c}/{layer.name}"].result()))
                     for layer in group} for c, group in layers.items()}
        cache[family] = (pipe, stats)
        return cache[family]

    return get


def _expected_matrix(method, layer, stats, target):
    """The layer's pruned weight matrix as ``method`` must have made it from the dense ``layer``."""
    from prunekit.ops.masks import layer_prune_mask, magnitude_scores, row_prune_mask, wanda_scores
    from prunekit.ops.sparsegpt import sparsegpt_prune

    matrix = layer.matrix().clone()
    norms, hessian = stats
    if method == "magnitude":  # tiny_magnitude.yaml: one threshold per layer
        return matrix.masked_fill(layer_prune_mask(magnitude_scores(matrix), target), 0)
    if method == "sparsegpt":
        return sparsegpt_prune(matrix, hessian, target, blocksize=128, percdamp=0.01)
    return matrix.masked_fill(row_prune_mask(wanda_scores(matrix, norms), target), 0)  # Wanda; OWL over it


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt", "owl"])
@pytest.mark.parametrize("family", FAMILIES)
def test_posttrain_prunes_denoiser_and_every_text_encoder(family, method, folders, reference, tmp_path):
    """Each component reaches its sparsity; the saved folder loads with stock diffusers and generates; and
    every pruned layer is zero exactly where the method's mask (from the dense weights and the inputs the
    pipeline's own call feeds them) says, with SparseGPT's weight update."""
    from prunekit_plugins.posttrain.config import DENOISER_EXCLUDE
    from prunekit_plugins.posttrain.layers import select_layers

    dense, stats = reference(family)
    out = tmp_path / "run"
    _, metrics = run_recipe(POSTTRAIN_RECIPES / f"tiny_{method}.yaml", _overrides(folders[family], family, method),
                            output=out)
    components = COMPONENTS[family]
    assert metrics["components"] == components
    assert list(stages(out)) == [f"prune_{c}" for c in components] + ["save_pipeline"]
    pipe = load_pipeline(out / "artifacts" / "pipeline", family)
    for i, component in enumerate(components):
        requested = DENOISER[family] if i == 0 else TEXT
        entry = metrics[component]
        assert entry["requested"] == requested
        assert entry["sparsity"] == pytest.approx(requested, abs=2e-3), component
        if i == 0:
            names = dict(dense.components[component].named_modules())
            assert all(name in names and name not in entry["layers"] for name in STEM_AND_HEAD[family])
        exclude = DENOISER_EXCLUDE if i == 0 else ()  # (tiny_magnitude.yaml's conv_in / conv_out: the same layers)
        pruned = {layer.name: layer for layer in select_layers(getattr(pipe, component), exclude)}
        originals = select_layers(getattr(dense, component), exclude)
        assert list(pruned) == [layer.name for layer in originals] == list(entry["layers"])
        targets = {name: requested for name in entry["layers"]}
        if method == "owl":  # outlier-weighted: layers differ, their size-weighted mean is the target
            from prunekit_plugins.posttrain.owl import OwlRule

            norms = {name: pair[0] for name, pair in stats[component].items()}
            owl = OwlRule().targets(originals, requested, "unstructured", norms)
            targets = {name: t.sparsity for name, t in owl.items()}
            assert entry["targets"] == pytest.approx(targets, abs=1e-6)  # (reported to 6 decimals)
            assert len(set(entry["targets"].values())) > 1
            sizes = {layer.name: layer.numel for layer in originals}
            mean = sum(targets[n] * sizes[n] for n in targets) / sum(sizes.values())
            assert mean == pytest.approx(requested, abs=1e-3)
        else:
            assert "targets" not in entry
        for original in originals:
            expected = _expected_matrix(method, original, stats[component][original.name], targets[original.name])
            got = pruned[original.name].matrix()
            assert torch.equal(got == 0, expected == 0), f"{component}.{original.name}: zeros off the mask"
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)
        # what is not prunable (the stem and head, norms, embeddings) is the dense model's
        state, before = getattr(pipe, component).state_dict(), getattr(dense, component).state_dict()
        prunable = {f"{name}.weight" for name in pruned}
        assert all(torch.equal(state[k], before[k]) for k in before if k not in prunable)
    generate(pipe, family)


def test_posttrain_sections_denoiser_alias_and_text_encoder_overrides(folders, tmp_path):
    """``unet`` keeps naming the denoiser's section (here a transformer's), ``denoiser`` and ``unet``
    together are refused, ``text_encoder_2`` replaces ``text_encoder`` for Flux's T5 alone, and a section for
    an encoder the pipeline lacks stops the run."""
    from prunekit.errors import PrunekitError, RecipeError
    from prunekit.recipe import load_recipe

    recipe = POSTTRAIN_RECIPES / "tiny_magnitude.yaml"
    flux = [f"model.path={folders['flux']}", "model.name=diffusers_sd", "eval.scheduler=pipeline"]
    with pytest.raises(RecipeError, match="denoiser and unet are the same section"):
        load_recipe(recipe, [*flux, "method.denoiser={sparsity: 0.5}"])
    _, metrics = run_recipe(recipe, [*flux, "method.unet={sparsity: 0.5}", "method.text_encoder_2={sparsity: 0.0}"],
                            output=tmp_path / "flux")
    assert metrics["transformer"]["sparsity"] == pytest.approx(0.5, abs=1e-3)
    assert metrics["text_encoder"]["sparsity"] == pytest.approx(TEXT, abs=1e-3)
    assert metrics["text_encoder_2"]["sparsity"] == 0 and metrics["text_encoder_2"]["skipped"]
    t5 = load_pipeline(tmp_path / "flux" / "artifacts" / "pipeline", "flux").text_encoder_2
    dense = load_pipeline(folders["flux"], "flux").text_encoder_2
    assert all(torch.equal(v, dense.state_dict()[k]) for k, v in t5.state_dict().items())
    with pytest.raises(PrunekitError, match="has no text_encoder_3"):
        run_recipe(recipe, [*flux, "method.text_encoder_3={sparsity: 0.5}"], output=tmp_path / "t3")


def test_sequential_sparsegpt_runs_block_by_block_through_the_flux_loop(folders, tmp_path):
    """SparseGPT's default: each transformer block re-recorded (a full denoising loop per block, packed
    tokens) after the blocks before it were pruned, double-stream blocks before single-stream ones."""
    cal = ", ".join(f"{k}: {v}" for k, v in _calibration("flux").items())
    _, metrics = run_recipe(POSTTRAIN_RECIPES / "tiny_sparsegpt.yaml",
                            [f"model.path={folders['flux']}", "model.name=diffusers_sd", "eval.scheduler=pipeline",
                             f"method.calibration={{{cal}}}", "method.text_encoder.sparsity=0"],
                            output=tmp_path / "run")
    entry = metrics["transformer"]
    blocks = entry["blocks"]
    assert entry["passes"] == len(blocks) and entry["sparsity"] == pytest.approx(0.35, abs=1e-3)
    order = [b for b in blocks if "transformer_blocks." in b]
    assert order == ["transformer_blocks.0", "transformer_blocks.1", "single_transformer_blocks.0",
                     "single_transformer_blocks.1"]
    assert blocks.index("transformer_blocks.0") > blocks.index("time_text_embed")  # forward order
