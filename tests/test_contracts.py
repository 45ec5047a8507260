"""Typed component contracts: a method's needs are checked against the components and losses a
recipe pairs it with, at validate time; a third-party trainable router is trained end to end."""

from __future__ import annotations

import importlib.util
import json
import sys
from dataclasses import dataclass

import pytest
from helpers import FIXTURES, REPO, install_fake_distribution, run_cli

from prunekit.errors import PluginError, RecipeError
from prunekit.recipe import load_recipe
from prunekit.registry import Registry, get_registry

SMOKE = REPO / "recipes" / "tiny" / "aptp_smoke.yaml"


def _fixture_module(name):
    spec = importlib.util.spec_from_file_location(name, FIXTURES / "thirdparty" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses look their module up while the class is created
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def registry():
    return get_registry(extra_plugins=[("example_router", _fixture_module("prunekit_example_router")),
                                       ("mlp_router", _fixture_module("prunekit_mlp_router"))])


def _problems(overrides, registry, recipe=SMOKE):
    with pytest.raises(RecipeError) as info:
        load_recipe(recipe, overrides, registry=registry)
    prefix = f"{recipe}: "
    return [p.removeprefix(prefix) for p in info.value.problems]


def test_aptp_refuses_a_router_it_cannot_train(registry):
    problems = _problems(["router.name=word_hash"], registry)
    assert problems == ["router.name: method 'aptp' needs a trainable router; 'word_hash' (local) is not one "
                        "(it provides: prompts)"]


def test_aptp_accepts_a_third_party_trainable_router(registry):
    recipe = load_recipe(SMOKE, ["router.name=mlp_router"], registry=registry)
    assert recipe.data["router"] == {"name": "mlp_router"}


def test_a_loss_whose_inputs_the_method_cannot_provide_is_refused(registry):
    # Expert fine-tuning has no router: the contrastive loss has nothing to compare.
    problems = _problems(["method.finetune.losses.contrastive={weight: 1.0}"], registry)
    assert len(problems) == 1
    assert problems[0].startswith("method.finetune.losses.contrastive: loss 'contrastive' needs arch_vectors, "
                                  "prompt_embeddings, which method 'aptp' does not provide there")


def test_finetune_losses_are_validated_like_top_level_ones(registry):
    problems = _problems(["method.finetune.losses.ddpn={weight: 1.0}",
                          "method.finetune.losses.ddpm={weight: -1}"], registry)
    assert any(p.startswith("method.finetune.losses.ddpn: unknown loss 'ddpn' (did you mean 'ddpm'?)") for p in problems)
    assert any(p.startswith("method.finetune.losses.ddpm.weight") for p in problems)


def test_dense_finetune_refuses_distillation_it_does_not_compute(registry):
    recipe = REPO / "recipes" / "tiny" / "dense_embedded.yaml"
    problems = _problems(["losses.contrastive={weight: 1.0}"], registry, recipe)
    assert len(problems) == 1 and "losses.contrastive: loss 'contrastive' needs" in problems[0]


def test_validate_prints_one_line_and_exits_2(tmp_path):
    site = install_fake_distribution(
        tmp_path / "site", "prunekit-example-router", {"example_router": "prunekit_example_router"},
        {"prunekit_example_router": (FIXTURES / "thirdparty" / "prunekit_example_router.py").read_text()},
    )
    proc = run_cli("validate", str(SMOKE), "router.name=word_hash", "--no-data", extra_path=site)
    assert proc.returncode == 2
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and "needs a trainable router" in lines[0], proc.stderr


def _register(fn):
    from prunekit.hookspecs import hookimpl

    class Plugin:
        @hookimpl
        def prunekit_register_components(self, register):
            fn(register)

    registry = Registry()
    registry.add_plugin(Plugin(), "p")
    return registry


def test_registering_an_unknown_capability_or_input_is_refused():
    with pytest.raises(PluginError, match=r"providing unknown 'learnable' \(a router may provide: trainable, prompts\)"):
        _register(lambda register: register("router", "r", lambda cfg: None, provides=("learnable",)))

    class NeedsImages:
        needs = frozenset({"images"})

    with pytest.raises(PluginError, match=r"loss 'l' needing unknown inputs images"):
        _register(lambda register: register("loss", "l", NeedsImages))


def test_a_component_lacking_what_it_declares_is_named_when_built():
    @dataclass
    class Cfg:
        num_codes: int = 2

    class HalfRouter:
        def __init__(self, config):
            self.num_codes = config.num_codes

        def route(self, z):
            return z

    registry = _register(lambda register: register("router", "half", HalfRouter, schema=Cfg, provides=("trainable",)))
    with pytest.raises(PluginError, match=r"router 'half' declares 'trainable' but lacks assign, codes, embed, forward"):
        registry.build("router", {"name": "half"})


def test_aptp_trains_a_third_party_router_end_to_end(tmp_path, registry):
    import torch

    from prunekit.evaluation import load_mixture
    from prunekit.runner import execute

    recipe = load_recipe(SMOKE, ["router={name: mlp_router, num_codes: 2, hidden: 16}",
                                 "method.finetune.losses={ddpm: {weight: 1.0}}"],
                         registry=registry)
    run, metrics = execute(recipe, registry, output=tmp_path / "run", console_log=False)
    assert sum(metrics["routing"]["counts"]) == 64 and len(metrics["routing"]["counts"]) == 2
    # The MLP was trained: the joint phase moved its weights and codes on from the warm-up's.
    from safetensors.torch import load_file

    warm = load_file(str(run.dir / "artifacts" / "router_warmup.safetensors"))
    joint = load_file(str(run.dir / "artifacts" / "router_joint.safetensors"))
    assert set(joint) == {"predictor.0.weight", "predictor.0.bias", "predictor.2.weight", "predictor.2.bias", "codes"}
    assert not torch.equal(warm["predictor.0.weight"], joint["predictor.0.weight"])
    # Fine-tuning losses came from the recipe: DDPM only, so no distillation term was logged.
    trained = [i for i, c in enumerate(metrics["routing"]["counts"]) if c]
    history = json.loads((run.dir / "artifacts" / f"finetune_expert_{trained[0]}_history.json").read_text())
    assert {k for k in history[0] if k.startswith("loss_")} == {"loss_ddpm"}
    mixture = load_mixture(run.dir / "artifacts" / "mixture", registry)
    experts = mixture.route(["a red circle", "a blue square", "two green triangles"])
    assert all(e in (0, 1) for e in experts)
    assert type(mixture.router.module).__name__ == "MLPRouter" and isinstance(mixture.router.module, torch.nn.Module)
