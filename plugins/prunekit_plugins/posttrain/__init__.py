"""Post-training unstructured / N:M pruning of a diffusion pipeline's text encoders and denoiser (U-Net
or transformer).

Methods ``magnitude``, ``wanda``, ``sparsegpt`` and ``owl`` share one calibration mechanism
(:mod:`prunekit.calibration`) and one driver (:mod:`.method`); each module holds one algorithm.
See docs/posttrain.md.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from prunekit.hookspecs import hookimpl
from prunekit_plugins.posttrain.config import (
    MagnitudeConfig,
    OwlConfig,
    PosttrainConfig,
    SparseGPTConfig,
    WandaConfig,
)


def _factory(name: str, make_rule: Callable[[Any], Any]) -> Callable[[PosttrainConfig], Any]:
    # The method and its rule import torch; importing them only when a run builds one keeps
    # `prunekit plugins` and `prunekit validate` fast.
    def build(config: PosttrainConfig) -> Any:
        from prunekit_plugins.posttrain.method import PosttrainMethod

        return PosttrainMethod(name, config, lambda: make_rule(config))

    build.__name__ = f"build_{name}"
    return build


def _magnitude(c: Any) -> Any:
    from prunekit_plugins.posttrain.magnitude import MagnitudeRule

    return MagnitudeRule(c.scope)


def _wanda(c: Any) -> Any:
    from prunekit_plugins.posttrain.wanda import WandaRule

    return WandaRule(c.scope)


def _sparsegpt(c: Any) -> Any:
    from prunekit_plugins.posttrain.sparsegpt import SparseGPTRule

    return SparseGPTRule(c.blocksize, c.percdamp)


def _owl(c: Any) -> Any:
    from prunekit_plugins.posttrain.owl import OwlRule

    return OwlRule(c.base, c.outlier_threshold, c.lam)


build_magnitude = _factory("magnitude", _magnitude)
build_wanda = _factory("wanda", _wanda)
build_sparsegpt = _factory("sparsegpt", _sparsegpt)
build_owl = _factory("owl", _owl)


@hookimpl
def prunekit_register_components(register) -> None:
    register("method", "magnitude", build_magnitude, schema=MagnitudeConfig,
             doc="Post-training magnitude pruning of text encoders and denoiser (per layer, row or global)")
    register("method", "wanda", build_wanda, schema=WandaConfig,
             doc="Post-training Wanda pruning: |W|·‖X‖ per output row from calibration activations")
    register("method", "sparsegpt", build_sparsegpt, schema=SparseGPTConfig,
             doc="Post-training SparseGPT: Hessian-based OBS pruning with weight updates, block by block")
    register("method", "owl", build_owl, schema=OwlConfig,
             doc="Post-training OWL: outlier-weighted per-layer sparsity over Wanda or magnitude")


@hookimpl
def prunekit_check_recipe(recipe: dict[str, Any]) -> list[str] | None:
    method = recipe.get("method") or {}
    if method.get("name") == "owl" and method.get("base", "wanda") == "wanda" and not recipe.get("dataset"):
        return ["dataset: method 'owl' with base 'wanda' needs a 'dataset' section (calibration prompts)"]
    return None
