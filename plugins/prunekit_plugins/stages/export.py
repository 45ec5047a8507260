"""Write the deployable mixture: router weights, the manifest, and (already saved) the experts."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from prunekit import run_files
from prunekit_plugins.stages.context import PruningContext


def export_mixture(ctx: PruningContext, router: Any, routing: dict[str, Any], experts: list[dict[str, Any]],
                   *, deployed: dict[str, Any]) -> dict[str, Any]:
    """``artifacts/mixture/``: a self-contained ``PromptRoutedPipeline`` folder (see
    :mod:`prunekit.mixture`). ``deployed`` holds the ``prompt_encoder`` and ``router`` recipe sections
    the mixture rebuilds its router from (with ``router``'s weights)."""
    from prunekit.mixture import write_mixture

    run = ctx.run
    folder = run_files.mixture_dir(run)
    total = max(1, sum(routing["counts"]))
    if not run.is_main:
        return {"path": str(folder), "mean_macs_ratio": routing["mean_macs_ratio"]}
    # The shared parts are written from a fresh copy of the model: the run's frozen copy computes in
    # the engine's precision, and a bf16 run must not round the VAE and text encoder it hands on.
    base = run.build("model")
    write_mixture(
        folder, base=base, router=router, prompt_encoder=ctx.encoder,
        router_section=deployed["router"], router_dims={"embed_dim": ctx.embed_dim, "num_units": ctx.num_units},
        prompt_encoder_section=deployed["prompt_encoder"],
        experts=[{"id": e["expert"], "path": e["path"], "macs": routing["macs"][e["expert"]],
                  "macs_ratio": e["macs_ratio"], "share": routing["counts"][e["expert"]] / total}
                 for e in experts],
        extra={"model": run.recipe.data["model"], "dense_macs": routing["dense_macs"],
               "mean_macs_ratio": routing["mean_macs_ratio"], "budget": routing["target"],
               "text_len": ctx.text_len, "latent_size": list(ctx.latent_hw)},
    )
    return {"path": str(folder), "mean_macs_ratio": routing["mean_macs_ratio"]}


def one_expert_model_entry(ctx: PruningContext, metrics: dict[str, Any]) -> dict[str, Any]:
    """For a single-architecture method: the exported model's MACs on its one expert entry, and a
    ``model`` entry (what the evaluation and report read)."""
    from prunekit.mixture import read_manifest

    folder = run_files.mixture_dir(ctx.run)
    manifest = read_manifest(folder)
    entry = manifest["experts"][0]
    metrics["experts"] = [{**metrics["experts"][0], "macs": entry["macs"], "share": 1.0}]
    expert = folder / entry["path"]
    metrics["model"] = {"path": str(expert), "format": f"diffusers.{_class_name(expert)}",
                        "macs": entry["macs"], "macs_ratio": entry["macs_ratio"],
                        "dense_macs": manifest["dense_macs"]}
    return metrics


def _class_name(expert: Path) -> str:
    """The diffusers class a saved expert loads as (``PrunedUNet2DConditionModel``, a ``Pruned*`` transformer)."""
    import json

    config = expert / "config.json"
    name = json.loads(config.read_text()).get("_class_name") if config.is_file() else None
    return str(name or "PrunedUNet2DConditionModel")
