"""Baselines: norm (weight-norm pruning to an exact MAC budget) and uni_arch (one learned code), and
the Table 3 ablation recipes."""

from __future__ import annotations

import json

import pytest
import torch
from helpers import REPO, TINY_RECIPES, run_recipe
from prunekit_plugins.baselines.budget_selection import select_under_budget
from prunekit_plugins.baselines.unit_norms import unit_l1_norms, unit_scores
from unet_helpers import LATENT, TEXT_LEN, TINY_SD2, build_unet

from prunekit.errors import RecipeError
from prunekit.recipe import load_recipe
from prunekit.unet import count_macs, make_prunable, measure_macs, physically_prune

pytestmark = pytest.mark.usefixtures("single_thread")

ABLATIONS = REPO / "recipes" / "ablations"
# Small and quick: 8 samples of 16 px (8x8 latents), batches of 4.
FAST = ["dataset.size=8", "dataset.resolution=16", "engine.micro_batch=4", "engine.checkpoint_every=50"]


def _prunable(depth=None, seed: int = 0):
    return make_prunable(build_unet(TINY_SD2, seed), depth=depth)


def _mac_model(prunable):
    return prunable.mac_model(height=LATENT, width=LATENT, text_len=TEXT_LEN)


@torch.no_grad()
def _scale_unit(prunable, unit: int, factor: float) -> None:
    """Multiply the input weights of one unit's channels (written here independently of unit_norms)."""
    u = prunable.units[unit]
    module = prunable.unet.get_submodule(u.path)
    channels = slice(u.position * u.size, (u.position + 1) * u.size)
    if u.kind == "resnet_group":
        module.conv1.weight[channels] *= factor
    elif u.kind == "attn_head":
        for name in ("to_q", "to_k", "to_v"):
            getattr(module, name).weight[channels] *= factor
    else:
        inner = module.net[2].in_features
        module.net[0].proj.weight[channels] *= factor
        module.net[0].proj.weight[inner + channels.start:inner + channels.stop] *= factor


def _scores(prunable, normalize="layer_mean"):
    l1, params = unit_l1_norms(prunable)
    return unit_scores(l1, params, prunable.inventory, normalize)


def test_norm_keeps_the_highest_norm_units_and_meets_the_mac_budget_exactly():
    prunable = _prunable()
    boosted = [layer.start + 1 for layer in prunable.inventory.width_layers]
    for unit in boosted:
        _scale_unit(prunable, unit, 10.0)
    scores = _scores(prunable)
    mac = _mac_model(prunable)
    selection = select_under_budget(mac, prunable.inventory, scores, 0.6)
    mask = selection.mask
    assert 0.6 * 0.99 <= selection.ratio <= 0.6
    # the MAC model's count is what the physically pruned U-Net really costs
    pruned = physically_prune(prunable, mask)
    assert measure_macs(pruned, height=LATENT, width=LATENT, text_len=TEXT_LEN) == pytest.approx(selection.macs, rel=1e-9)
    assert mask[boosted].all(), "a unit with a 10x larger norm was pruned"
    assert (~mask).sum() > len(prunable.inventory.width_layers), "the budget should remove many units"
    for layer in prunable.inventory.width_layers:
        kept, dropped = scores[layer.start:layer.stop][mask[layer.start:layer.stop]], \
            scores[layer.start:layer.stop][~mask[layer.start:layer.stop]]
        assert len(kept) >= 1, f"{layer.path} was emptied"
        if len(dropped):
            assert kept.min() >= dropped.max(), f"{layer.path}: a lower-norm unit was kept over a higher one"


def test_selection_with_depth_units_and_channel_rounding_stays_within_budget():
    prunable = _prunable(depth="aptp")
    mac = _mac_model(prunable)
    selection = select_under_budget(mac, prunable.inventory, _scores(prunable), 0.5)
    assert 0.5 * 0.99 <= selection.ratio <= 0.5
    assert count_macs(prunable, selection.mask, height=LATENT, width=LATENT, text_len=TEXT_LEN) == \
        pytest.approx(selection.macs, rel=1e-9)

    plain = _prunable()
    rounded = select_under_budget(_mac_model(plain), plain.inventory, _scores(plain), 0.6, round_to=8)
    assert rounded.ratio <= 0.6
    for layer in plain.inventory.width_layers:
        kept = int(rounded.mask[layer.start:layer.stop].sum())
        assert kept >= 1 and (kept == layer.count or kept * layer.size % 8 == 0), (layer.path, kept, layer.size)
    with pytest.raises(ValueError, match="cannot be met"):
        select_under_budget(_mac_model(plain), plain.inventory, _scores(plain), 0.01)


def test_unit_norms_are_the_weights_that_physical_pruning_removes():
    prunable = _prunable(depth="aptp")
    l1, params = unit_l1_norms(prunable)

    def matrices(model):
        weights = [p.detach().double() for p in model.parameters() if p.ndim >= 2]
        return sum(float(w.abs().sum()) for w in weights), sum(w.numel() for w in weights)

    dense_l1, dense_n = matrices(prunable.unet)
    picks = {kind: int(prunable.inventory.indices(kind)[3]) for kind in ("resnet_group", "attn_head", "ffn_group")}
    picks["depth_resnet"] = int(prunable.inventory.indices("depth_resnet")[0])
    for kind, unit in picks.items():
        mask = torch.ones(prunable.num_units, dtype=torch.bool)
        mask[unit] = False
        pruned_l1, pruned_n = matrices(physically_prune(prunable, mask))
        assert dense_l1 - pruned_l1 == pytest.approx(float(l1[unit]), rel=1e-6), kind
        assert dense_n - pruned_n == int(params[unit]), kind


def test_layer_mean_scores_ignore_a_layers_scale_and_param_count_does_not():
    prunable = _prunable()
    inventory = prunable.inventory
    before = {n: select_under_budget(_mac_model(prunable), inventory, _scores(prunable, n), 0.6).mask
              for n in ("layer_mean", "param_count")}
    # a ResNet layer that loses units under both scores
    layer = next(layer for layer in inventory.width_layers if layer.kind == "resnet_group"
                 and not before["layer_mean"][layer.start:layer.stop].all()
                 and not before["param_count"][layer.start:layer.stop].all())
    with torch.no_grad():
        resnet = prunable.unet.get_submodule(layer.path)
        for weight in (resnet.conv1.weight, resnet.conv2.weight, resnet.time_emb_proj.weight):
            weight *= 50.0
    after = {n: select_under_budget(_mac_model(prunable), inventory, _scores(prunable, n), 0.6).mask
             for n in ("layer_mean", "param_count")}
    assert torch.equal(after["layer_mean"], before["layer_mean"])
    assert after["param_count"][layer.start:layer.stop].all()


def test_norm_run_exports_a_one_expert_mixture_at_the_budget(tmp_path):
    from prunekit.pipeline import PromptRoutedPipeline
    from prunekit.unet import load_expert

    out = tmp_path / "norm"
    _, metrics = run_recipe(TINY_RECIPES / "norm.yaml", [*FAST, "budget.target=0.6", "method.finetune.iters=1",
                                                         "metrics.macs={}", "eval.steps=1", "eval.prompts=4"],
                            output=out)
    assert list(json.loads((out / "stages.json").read_text())) == ["encode", "select", "finetune_expert_0", "export",
                                                                   "evaluate"]
    [expert] = metrics["experts"]
    assert expert["share"] == 1.0 and expert["samples"] == 8 and expert["finetune_steps"] == 1
    assert 0.6 * 0.99 <= expert["macs_ratio"] <= 0.6
    model = metrics["model"]
    assert model["macs"] == expert["macs"] and model["macs_ratio"] == expert["macs_ratio"]
    # evaluated like an APTP mixture: the evaluation measures the same MACs on what it generated with
    assert metrics["mixture"]["metrics"]["macs_ratio"] == pytest.approx(expert["macs_ratio"], rel=1e-6)
    assert metrics["teacher"]["metrics"]["macs_ratio"] == 1.0 and metrics["experts"][0]["eval_images"] == 4
    manifest = json.loads((out / "artifacts" / "mixture" / "manifest.json").read_text())
    unet = load_expert(model["path"])
    assert measure_macs(unet, height=8, width=8, text_len=manifest["text_len"]) == pytest.approx(expert["macs"], rel=1e-9)
    pipe = PromptRoutedPipeline.from_pretrained(metrics["mixture"]["path"])
    prompts = ["a small red circle", "a large blue square", "a photo of a cat"]
    result = pipe(prompts, num_inference_steps=1, output_type="np", height=16, width=16)
    assert result.experts == [0, 0, 0] and len(result.images) == 3


def test_uni_arch_trains_one_code_that_every_prompt_uses(tmp_path):
    from safetensors.torch import load_file

    from prunekit.pipeline import PromptRoutedPipeline

    out = tmp_path / "uni"
    _, metrics = run_recipe(TINY_RECIPES / "uni_arch.yaml", [*FAST, "budget.target=0.6", "method.prune.iters=8",
                                                             "method.prune.lr=0.1", "method.prune.lr_warmup=0",
                                                             "method.init_logit=0.3", "method.finetune.iters=1"],
                            output=out)
    codes = load_file(out / "artifacts" / "router_joint.safetensors")["codes"]
    router = json.loads((out / "artifacts" / "mixture" / "router" / "config.json").read_text())
    assert router["router"]["name"] == "single_code" and codes.shape == (1, router["router_dims"]["num_units"])
    assert not torch.allclose(codes, torch.full_like(codes, 0.3)), "the code was not trained"
    history = json.loads((out / "artifacts" / "prune_joint_history.json").read_text())
    assert len(history) == 8 and history[-1]["macs_ratio"] < history[0]["macs_ratio"]
    # one architecture: every training sample and any new prompt goes to it
    assert metrics["routing"]["counts"] == [8]
    [expert] = metrics["experts"]
    assert expert["share"] == 1.0 and expert["samples"] == 8
    assert 0.6 * 0.99 <= expert["macs_ratio"] <= 0.6  # finalize: budget (recipes/tiny/uni_arch.yaml)
    pipe = PromptRoutedPipeline.from_pretrained(metrics["mixture"]["path"])
    assert pipe.route(["a large green triangle", "an unrelated prompt"]) == [0, 0]


def test_baseline_recipes_refuse_sections_they_would_ignore(tmp_path):
    with pytest.raises(RecipeError) as err:
        load_recipe(TINY_RECIPES / "uni_arch.yaml", ["losses.contrastive.weight=1.0", "router.name=aptp"])
    text = "\n".join(err.value.problems)
    assert "losses.contrastive: uni_arch trains one architecture" in text
    assert "router: method 'uni_arch' does not use a router section" in text
    with pytest.raises(RecipeError) as err:
        load_recipe(TINY_RECIPES / "norm.yaml", ["gate.name=gumbel_sigmoid"])
    assert "gate: method 'norm' does not use a gate section" in "\n".join(err.value.problems)


@pytest.mark.parametrize("prefix, aptp_base", [("coco", REPO / "recipes" / "aptp_coco_base.yaml"),
                                               ("tiny", REPO / "recipes" / "aptp_tiny.yaml")])
def test_table3_ablations_differ_only_in_their_component(prefix, aptp_base):
    rows = {name: load_recipe(ABLATIONS / f"{prefix}_{name}.yaml").data
            for name in ("uni_arch", "contrastive_router", "optimal_transport", "distillation")}
    for name, data in rows.items():
        assert data["budget"]["target"] == 0.8, name
    assert rows["uni_arch"]["method"]["name"] == "uni_arch" and rows["uni_arch"].get("router") is None
    assert set(rows["uni_arch"]["losses"]) == {"ddpm", "resource"}
    contrastive, transport, full = rows["contrastive_router"], rows["optimal_transport"], rows["distillation"]
    assert contrastive["router"]["optimal_transport"] is False and transport["router"]["optimal_transport"] is True
    # the tiny rows keep aptp_tiny's router-consistency loss (docs/aptp.md) in every APTP row
    router_losses = {"contrastive", "routing"} if prefix == "tiny" else {"contrastive"}
    assert set(contrastive["losses"]) == set(transport["losses"]) == {"ddpm", "resource", *router_losses}
    # the last row is the full method: the base APTP recipe at the ablation budget and fine-tuning length
    prune = [f"method.prune.{k}={v}" for k, v in full["method"]["prune"].items()]
    base = load_recipe(aptp_base, ["budget.target=0.8", f"method.finetune.iters={full['method']['finetune']['iters']}",
                                   f"router.num_codes={full['router']['num_codes']}", "router.optimal_transport=true",
                                   *prune]).data
    differing = {k for k in base if k not in ("name", "description") and base[k] != full.get(k)}
    assert differing == set(), differing
    assert {k for k in full if full[k] != transport.get(k)} - {"name", "description"} == {"losses"}
    assert {k for k in transport if transport[k] != contrastive.get(k)} - {"name", "description"} == {"router"}


def test_embedded_comparison_recipes_evaluate_like_aptp_tiny():
    """The eval: section is the recipe's, not the method's: each comparison recipe inherits aptp_tiny's
    evaluation (same prompts, noise, sampler and guidance) and metrics although it names another method."""
    aptp = load_recipe(REPO / "recipes" / "aptp_tiny.yaml").data
    for name in ("norm_embedded", "uni_arch_embedded", "dense_embedded"):
        data = load_recipe(TINY_RECIPES / f"{name}.yaml").data
        assert data["eval"] == aptp["eval"] and data["eval"]["steps"] == 20, name
        assert set(data["metrics"]) >= {"domain_alignment", "domain_fid"} and data["dataset"] == aptp["dataset"], name
