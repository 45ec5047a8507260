"""Baselines for fair comparisons with APTP: ``norm`` (weight-norm pruning to a MAC budget) and
``uni_arch`` (one learned architecture), plus the ``single_code`` router and ``constant`` prompt
encoder that let a single-architecture model deploy as a one-expert mixture."""

from __future__ import annotations

from typing import Any

from prunekit.hookspecs import hookimpl
from prunekit_plugins.baselines.norm import NormConfig, NormPruning
from prunekit_plugins.baselines.single_code import (
    ConstantPromptEncoder,
    ConstantPromptEncoderConfig,
    SingleCodeRouterConfig,
    build_single_code_router,
)
from prunekit_plugins.baselines.uni_arch import UniArch, UniArchConfig

# Sections these methods would silently ignore; a recipe that sets them is most likely a mistake
# (e.g. an APTP recipe switched to another method without dropping the APTP-only parts).
UNUSED_SECTIONS: dict[str, tuple[str, ...]] = {
    "norm": ("prompt_encoder", "router", "gate", "losses"),
    "uni_arch": ("prompt_encoder", "router"),
}


@hookimpl
def prunekit_register_components(register) -> None:
    register("method", "norm", NormPruning, schema=NormConfig,
             doc="Weight-norm (L1) structured pruning to an exact MAC budget, fine-tuned on the whole dataset")
    register("method", "uni_arch", UniArch, schema=UniArchConfig,
             doc="One learned architecture (single gated code, no router), fine-tuned on the whole dataset")
    register("router", "single_code", build_single_code_router, schema=SingleCodeRouterConfig,
             provides=("trainable",),
             doc="One architecture code for every prompt (single-architecture models as one-expert mixtures)")
    register("prompt_encoder", "constant", ConstantPromptEncoder, schema=ConstantPromptEncoderConfig,
             doc="Encodes every prompt as the same zero vector (for models that do not route)")


@hookimpl
def prunekit_check_recipe(recipe: dict[str, Any]) -> list[str]:
    method = (recipe.get("method") or {}).get("name")
    unused = UNUSED_SECTIONS.get(method, ()) if isinstance(method, str) else ()
    problems = [f"{key}: method {method!r} does not use a {key} section; remove it "
                f"(or set '{key}: null' when extending a recipe that has one)"
                for key in unused if recipe.get(key)]
    if method == "uni_arch" and (recipe.get("losses") or {}).get("contrastive") is not None:
        problems.append("losses.contrastive: uni_arch trains one architecture for every prompt, so there is "
                        "no prompt-to-architecture similarity to learn; drop it (losses.contrastive: null)")
    return problems
