"""The ``evaluate`` stage: what a run deployed (:mod:`prunekit.deployable`) scored against its teacher
with the recipe's ``metrics:`` and ``eval:`` settings → ``artifacts/evaluation.json``, merged into
``metrics.json`` by :func:`merge_evaluation`. The runner runs it; ``prunekit eval`` runs it again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import asdict
from pathlib import Path
from typing import Any

from prunekit import run_files
from prunekit.eval_config import SECTION, eval_config, eval_dataset_section
from prunekit.evaluation.config import build_metrics
from prunekit.evaluation.data import eval_data_source, select_indices
from prunekit.evaluation.scoring import evaluate

LOG = logging.getLogger("prunekit")


def load_mixture(mixture_dir: str | Path, registry: Any, *, base: Any = None, device: str | None = None) -> Any:
    """The :class:`PromptRoutedPipeline` of a mixture folder (``base``: reuse an already loaded model)."""
    from prunekit.pipeline import PromptRoutedPipeline

    if device is None:
        device = str(base.device) if base is not None else "cpu"
    mixture = PromptRoutedPipeline.from_pretrained(mixture_dir, device=device, registry=registry, base=base)
    if base is None:  # the dense model the mixture was cut from, as its manifest names it
        base = registry.build("model", mixture.manifest["model"]).to(device)
        base.set_progress_bar_config(disable=True)
    mixture.teacher = base
    return mixture


def _eval_setup(recipe_data: Mapping[str, Any], registry: Any, log: logging.Logger,
                collective: bool = False) -> tuple[Any, ...]:
    """The recipe's eval settings, metric plugins, prompts, real images, attributes, and what was
    skipped: drawn rows whose image cannot be read or whose caption is empty are left out (counted
    by reason, the first few named in the log), and beyond ``eval.max_skipped_fraction`` the
    evaluation stops with one line."""
    from prunekit.data import check_skipped, usable_rows
    from prunekit.errors import RecipeError

    config = eval_config(recipe_data)
    metrics = build_metrics(recipe_data, registry)
    if not metrics:
        raise RecipeError(["metrics: the recipe selects no metric plugin (e.g. metrics: {fid: {inception_weights: ...}})"])
    section = eval_dataset_section(recipe_data)
    if not section:
        raise RecipeError([f"{SECTION}.dataset: no eval dataset (and the recipe has no dataset section)"])
    dataset = registry.build("dataset", section)
    indices, data = usable_rows(dataset, select_indices(len(dataset), config.prompts, config.seed),
                                collective=collective)
    if getattr(dataset, "rejected", None):  # dropped while indexing (bad metadata lines, ...): not drawn
        data["rejected"] = dict(dataset.rejected)
        data["rejected_examples"] = list(getattr(dataset, "rejected_examples", []))[:5]
        log.warning("evaluate: the eval dataset rejected %s while indexing; first: %s",
                    ", ".join(f"{k} {v}" for k, v in sorted(dataset.rejected.items())),
                    "; ".join(data["rejected_examples"][:3]) or "none")
    check_skipped("evaluate", rows=data["rows"], usable=data["samples"], counts=data["skipped"],
                  examples=data["skipped_examples"], log=log, fraction=config.max_skipped_fraction,
                  option=f"{SECTION}.max_skipped_fraction")
    prompts, real, attributes = eval_data_source(dataset, indices)
    log.info("evaluate: %d prompts from dataset %r; metrics %s", len(prompts), section["name"], ", ".join(metrics))
    return config, metrics, section, prompts, real, attributes, data


def evaluate_mixture(mixture_dir: str | Path, recipe_data: Mapping[str, Any], registry: Any, *, base: Any = None,
                     device: str | None = None, log: logging.Logger | None = None,
                     collective: bool = False, folder: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a mixture (and, by default, its teacher) with the recipe's metrics and ``eval:``.

    Returns a JSON-able dict: ``settings``, ``prompts``, ``data`` (eval rows drawn, used and skipped
    by reason), ``teacher`` and ``mixture`` (each ``{"metrics", "generation"}``) and ``experts``
    (per-expert image counts and metrics).
    """
    log = log or LOG
    config, metrics, section, prompts, real, attributes, data = _eval_setup(recipe_data, registry, log, collective)
    mixture = load_mixture(mixture_dir, registry, base=base, device=device)
    out: dict[str, Any] = {"settings": {**asdict(config), "dataset": section}, "prompts": len(prompts), "data": data}
    if config.teacher:
        out["teacher"] = evaluate(mixture.teacher, prompts, metrics, config, real_images=real, attributes=attributes,
                                  role="teacher", log=log, collective=collective, folder=folder)
    evaluated = evaluate(mixture, prompts, metrics, config, real_images=real, attributes=attributes, role="mixture",
                         log=log, collective=collective, folder=folder)
    out["experts"] = evaluated.pop("experts")
    out["mixture"] = evaluated
    return out


def evaluate_pipeline(pipeline: Any, recipe_data: Mapping[str, Any], registry: Any, *,
                      teacher: Callable[[], Any] | None = None,
                      log: logging.Logger | None = None, collective: bool = False,
                      folder: str | Path | None = None) -> dict[str, Any]:
    """Evaluate one diffusers pipeline (a fine-tuned or sparsified model) as ``model``, and, when
    ``eval.teacher`` is on, ``teacher()`` (the unmodified model) on the same prompts and noise.

    Returns ``settings``, ``prompts``, ``data`` (eval rows skipped by reason), ``model`` and ``teacher``
    (each ``{"metrics", "generation"}``).
    """
    log = log or LOG
    config, metrics, section, prompts, real, attributes, data = _eval_setup(recipe_data, registry, log, collective)
    out: dict[str, Any] = {"settings": {**asdict(config), "dataset": section}, "prompts": len(prompts), "data": data}
    if config.teacher and teacher is not None:
        out["teacher"] = evaluate(teacher(), prompts, metrics, config, real_images=real, attributes=attributes,
                                  role="teacher", log=log, collective=collective, folder=folder)
    out["model"] = evaluate(pipeline, prompts, metrics, config, real_images=real, attributes=attributes,
                            role="model", log=log, collective=collective, folder=folder)
    return out


def merge_evaluation(metrics: dict[str, Any], evaluation: Mapping[str, Any]) -> dict[str, Any]:
    """Put an evaluation into a run's metrics: ``evaluation`` (settings, prompts, the eval rows
    skipped as ``data``), ``experts[i].metrics``, ``mixture.metrics`` (or ``model.metrics`` for a
    single pipeline), ``teacher``."""
    metrics["evaluation"] = {k: evaluation[k] for k in ("settings", "prompts", "data") if k in evaluation}
    by_id = {e["expert"]: e for e in evaluation.get("experts", [])}
    for entry in metrics.get("experts", []):
        found = by_id.get(entry.get("expert"), {})
        entry["metrics"] = found.get("metrics", {})
        entry["eval_images"] = found.get("images", 0)
        entry["eval_share"] = found.get("share", 0.0)
    for role in ("mixture", "model"):
        if role in evaluation:
            metrics.setdefault(role, {})
            metrics[role]["metrics"] = evaluation[role]["metrics"]
            metrics[role]["generation"] = evaluation[role]["generation"]
    if "teacher" in evaluation:
        metrics["teacher"] = evaluation["teacher"]
    return metrics


# -- the stage ---------------------------------------------------------------------------------------


def _saved_evaluation(run: Any, evaluate_fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``evaluate_fn`` on every rank (generation is split over them), write rank 0's result to
    ``artifacts/evaluation.json``; every rank returns it."""
    from prunekit import distributed
    from prunekit.run import atomic_write_json

    result = evaluate_fn()
    if run.is_main:
        atomic_write_json(run_files.evaluation_file(run), result)
    return distributed.broadcast(result)


def evaluate_mixture_stage(run: Any, mixture_dir: str | Path, *, base: Any = None) -> dict[str, Any]:
    """The ``evaluate`` stage of a run that deployed a mixture → ``artifacts/evaluation.json``."""
    return _saved_evaluation(run, lambda: evaluate_mixture(mixture_dir, run.recipe.data, run.registry,
                                                           base=base, log=run.log, collective=True,
                                                           folder=run_files.eval_images_dir(run)))


def evaluate_pipeline_stage(run: Any, pipeline: Any) -> dict[str, Any]:
    """The ``evaluate`` stage of a run that deployed one pipeline (dense fine-tuning, post-training
    sparsity): ``pipeline`` against a fresh build of the recipe's model → ``artifacts/evaluation.json``."""
    return _saved_evaluation(run, lambda: evaluate_pipeline(pipeline, run.recipe.data, run.registry,
                                                            teacher=lambda: run.build("model"), log=run.log,
                                                            collective=True, folder=run_files.eval_images_dir(run)))


def evaluate_deployable(run: Any, deployable: Any) -> dict[str, Any]:
    """The ``evaluate`` stage for a :class:`~prunekit.deployable.Deployable`: a mixture folder with its
    teacher, or a pipeline (the in-memory one the method handed over, else its saved folder, loaded
    in float32 as a user loads it and placed in the engine's precision) against the recipe's model."""
    if deployable.kind == "mixture":
        return evaluate_mixture_stage(run, deployable.folder(run), base=deployable.base)
    pipeline = deployable.pipeline
    if pipeline is None:
        from prunekit.models import load_pipeline
        from prunekit.placement import place_frozen

        pipeline = place_frozen(load_pipeline(str(deployable.folder(run)), dtype="float32"),
                                run.recipe.data["engine"]["precision"])
    return evaluate_pipeline_stage(run, pipeline)
