"""What a recipe's sampler and denoising loss assume about the model, checked against what the model is
trained for, before anything is loaded.

A model is either DDPM-family (a noise scheduler with ``alphas_cumprod`` and a ``prediction_type``:
``epsilon``, ``v_prediction`` or ``sample``; SD 1.x / 2.x, SDXL, PixArt) or trained by flow matching
(a ``FlowMatch*`` scheduler, ``flow_matching``; SD3, Flux), as :mod:`prunekit.objectives` decides at
training time. A recipe contradicts it with

- ``eval.scheduler``: a DDPM-family sampler (pndm, ddim, dpm_solver, euler, ddpm) on a flow-matching
  model, or the flow-matching sampler (flow_match_euler) on a DDPM-family one; ``pipeline`` always fits;
- a loss schema's own options (it opts in with ``check_objective(model, where) -> list[str]``; the
  ``ddpm`` loss: an explicit ``prediction_type`` other than the model's, or Min-SNR weighting on flow
  matching), in the top-level ``losses`` and in every loss set the method declares (``loss_inputs``).

The model's side comes from its schema (``objective(*, local_files) -> ModelObjective | None``): a
model built in code knows it; ``diffusers_sd`` knows the published hub ids below, reads an existing
local folder's ``model_index.json`` and ``scheduler/scheduler_config.json`` (no weights), or a hub id's
cached copies of them; ``local_files=False`` (``prunekit validate --no-data``: a recipe for another
machine) reads nothing from disk. An unknown model is not checked. Imports no torch or diffusers.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

FLOW = "flow_matching"
# eval.scheduler values by the family they sample; "pipeline" keeps the model's own and always fits.
DDPM_SAMPLERS = ("pndm", "ddim", "dpm_solver", "euler", "ddpm")
FLOW_SAMPLERS = ("flow_match_euler",)

# Published diffusers repositories: hub id -> (pipeline class, prediction type of its shipped scheduler).
# Checked with no file at hand (``prunekit validate --no-data`` in CI).
PUBLISHED: dict[str, tuple[str, str]] = {
    "CompVis/stable-diffusion-v1-4": ("StableDiffusionPipeline", "epsilon"),
    "runwayml/stable-diffusion-v1-5": ("StableDiffusionPipeline", "epsilon"),
    "stable-diffusion-v1-5/stable-diffusion-v1-5": ("StableDiffusionPipeline", "epsilon"),
    "stabilityai/stable-diffusion-2-base": ("StableDiffusionPipeline", "epsilon"),
    "stabilityai/stable-diffusion-2": ("StableDiffusionPipeline", "v_prediction"),
    "stabilityai/stable-diffusion-2-1-base": ("StableDiffusionPipeline", "epsilon"),
    "stabilityai/stable-diffusion-2-1": ("StableDiffusionPipeline", "v_prediction"),
    "stabilityai/stable-diffusion-xl-base-1.0": ("StableDiffusionXLPipeline", "epsilon"),
    "stabilityai/stable-diffusion-3-medium-diffusers": ("StableDiffusion3Pipeline", FLOW),
    "stabilityai/stable-diffusion-3.5-medium": ("StableDiffusion3Pipeline", FLOW),
    "stabilityai/stable-diffusion-3.5-large": ("StableDiffusion3Pipeline", FLOW),
    "stabilityai/stable-diffusion-3.5-large-turbo": ("StableDiffusion3Pipeline", FLOW),
    "PixArt-alpha/PixArt-XL-2-1024-MS": ("PixArtAlphaPipeline", "epsilon"),
    "PixArt-alpha/PixArt-Sigma-XL-2-1024-MS": ("PixArtSigmaPipeline", "epsilon"),
    "black-forest-labs/FLUX.1-dev": ("FluxPipeline", FLOW),
    "black-forest-labs/FLUX.1-schnell": ("FluxPipeline", FLOW),
}
_PUBLISHED_LOWER = {k.lower(): k for k in PUBLISHED}


@dataclass(frozen=True)
class ModelObjective:
    """What a model predicts (``epsilon``, ``v_prediction``, ``sample`` or ``flow_matching``) and how
    messages name it (``black-forest-labs/FLUX.1-dev (FluxPipeline)``)."""

    prediction: str
    model: str

    @property
    def flow(self) -> bool:
        return self.prediction == FLOW

    def trained_by(self) -> str:
        """``is trained by flow matching`` / ``predicts v (v_prediction, a DDPM-family model)``."""
        if self.flow:
            return "is trained by flow matching"
        what = {"epsilon": "the noise", "v_prediction": "v", "sample": "the clean latents"}.get(self.prediction,
                                                                                           self.prediction)
        return f"predicts {what} ({self.prediction}, a DDPM-family model)"


def published_objective(hub_id: str) -> ModelObjective | None:
    key = _PUBLISHED_LOWER.get(hub_id.lower())
    if key is None:
        return None
    pipeline, prediction = PUBLISHED[key]
    return ModelObjective(prediction, f"{hub_id} ({pipeline})")


def _read_json(path: Path | str | None) -> dict[str, Any] | None:
    if path is None:
        return None
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def objective_from_configs(scheduler: Mapping[str, Any] | None, index: Mapping[str, Any] | None,
                           label: str) -> ModelObjective | None:
    """From a pipeline's ``scheduler_config.json`` (and ``model_index.json`` for its class name), as
    :func:`prunekit.objectives.prediction_type` reads the loaded scheduler."""
    if scheduler is None:
        return None
    scheduler_class = str(scheduler.get("_class_name", ""))
    prediction = FLOW if scheduler_class.startswith("FlowMatch") else str(scheduler.get("prediction_type") or "epsilon")
    names = [str(index["_class_name"])] if index and index.get("_class_name") else []
    if scheduler_class:
        names.append(scheduler_class)
    return ModelObjective(prediction, f"{label} ({', '.join(names)})" if names else label)


def folder_objective(folder: str | Path, label: str | None = None) -> ModelObjective | None:
    """A local diffusers folder's objective from its config files (None when they are not there)."""
    folder = Path(folder).expanduser()
    return objective_from_configs(_read_json(folder / "scheduler" / "scheduler_config.json"),
                                  _read_json(folder / "model_index.json"), label or str(folder))


def cached_objective(hub_id: str) -> ModelObjective | None:
    """A hub id's objective from the Hugging Face cache of this machine (never the network)."""
    try:
        from huggingface_hub import try_to_load_from_cache
    except ImportError:
        return None

    def cached(filename: str) -> str | None:
        try:
            found = try_to_load_from_cache(hub_id, filename)
        except Exception:  # a malformed id, an unreadable cache: not checked here
            return None
        return found if isinstance(found, str) else None

    return objective_from_configs(_read_json(cached("scheduler/scheduler_config.json")),
                                  _read_json(cached("model_index.json")), hub_id)


def _model_objective(data: Mapping[str, Any], registry: Any, local_files: bool) -> ModelObjective | None:
    from prunekit.config import instantiate_schema, validate_options

    section = data.get("model")
    if not isinstance(section, Mapping) or not isinstance(section.get("name"), str):
        return None
    component = registry.find("model", section["name"])
    schema = component.schema if component is not None else None
    if schema is None or not hasattr(schema, "objective"):
        return None
    options = {k: v for k, v in section.items() if k != "name"}
    if validate_options(schema, options, "model"):  # reported by the section's own checks
        return None
    try:
        return instantiate_schema(schema, options).objective(local_files=local_files)
    except Exception:  # an unreadable folder is the loader's to report, not a mismatch
        return None


def _sampler_problem(data: Mapping[str, Any], model: ModelObjective) -> list[str]:
    from prunekit.eval_config import EvalConfig

    section = data.get("eval")
    section = section if isinstance(section, Mapping) else {}
    explicit = "scheduler" in section
    name = section["scheduler"] if explicit else EvalConfig.scheduler
    default = "" if explicit else " (the default)"
    if model.flow and name in DDPM_SAMPLERS:
        return [f"eval.scheduler: {name!r}{default} is a DDPM-family sampler, but model {model.model} "
                f"{model.trained_by()}: set eval.scheduler=pipeline (its own flow-matching sampler) or "
                f"eval.scheduler={FLOW_SAMPLERS[0]}"]
    if not model.flow and name in FLOW_SAMPLERS:
        return [f"eval.scheduler: {name!r} is a flow-matching sampler, but model {model.model} {model.trained_by()}: "
                f"set eval.scheduler=pipeline or a DDPM-family sampler ({', '.join(DDPM_SAMPLERS)})"]
    return []


def _loss_sets(data: Mapping[str, Any], registry: Any) -> list[tuple[str, Any]]:
    """``(path, {loss name: options})`` of the top-level ``losses`` and of every loss set the method
    declares (its schema's default where the recipe leaves it out)."""
    from prunekit.recipe import _at, _schema_default

    paths = ["losses"]
    method = data.get("method")
    schema = None
    if isinstance(method, Mapping) and isinstance(method.get("name"), str):
        component = registry.find("method", method["name"])
        schema = component.schema if component is not None else None
    paths += [p for p in getattr(schema, "loss_inputs", {}) if p not in paths]
    out = []
    for path in paths:
        section = _at(data, path)
        if section is None and path.startswith("method.") and schema is not None:
            section = _schema_default(schema, path.split(".")[1:])
        if isinstance(section, Mapping):
            out.append((path, section))
    return out


def _loss_problems(data: Mapping[str, Any], registry: Any, model: ModelObjective) -> list[str]:
    from prunekit.config import instantiate_schema, validate_options

    problems: list[str] = []
    for path, section in _loss_sets(data, registry):
        for name, options in section.items():
            loss = registry.find("loss", str(name))
            schema = loss.schema if loss is not None else None
            if schema is None or not hasattr(schema, "check_objective") or not isinstance(options, Mapping):
                continue
            where = f"{path}.{name}"
            if validate_options(schema, options, where):  # reported by the recipe's own checks
                continue
            problems.extend(instantiate_schema(schema, options).check_objective(model, where) or [])
    return problems


def objective_problems(data: Mapping[str, Any], registry: Any, *, local_files: bool = True) -> list[str]:
    """Every place where a merged recipe's sampler or denoising loss contradicts its model's
    objective, one line each naming the recipe key, the model and what to set instead; empty when the
    model's objective is unknown here."""
    model = _model_objective(data, registry, local_files)
    if model is None:
        return []
    return _sampler_problem(data, model) + _loss_problems(data, registry, model)
