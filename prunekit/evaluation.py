"""Evaluation: generate images for prompts, then run the recipe's ``metric`` plugins on them.

A metric plugin builds a callable ``metric(batch: EvalBatch) -> dict[str, value]`` (values are numbers
or short strings; keys must be unique across the metrics of a recipe). A metric object may set
``per_expert = False`` when it describes a whole pipeline (MACs, latency) rather than a set of images;
the others also run on the images of each expert of a mixture.

Generation follows the APTP paper (App. E.3, after BK-SDM): PNDM, 25 steps, guidance 7.5, at the
model's native resolution, images resized to the eval dataset's resolution before any metric. Image
``i`` uses seed ``seed + i`` for the teacher and the mixture alike, so both start from the same noise.

``prunekit eval RUN_OR_MIXTURE`` re-runs the evaluation of a finished run (see :func:`main_eval`).
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Literal

from prunekit.config import option

LOG = logging.getLogger("prunekit")
SAMPLES_DIR = "samples"
EVALUATION_FILE = "evaluation.json"
EVAL_IMAGES_DIR = "eval_images"  # artifacts/eval_images/<role>/000000.png ...: what was scored, and the resume point


@dataclass
class EvalBatch:
    """Generated images for a set of prompts, with optional references.

    ``images`` and ``real_images`` are uint8 tensors of shape (N, 3, H, W). ``attributes`` holds the
    ground-truth attributes of each prompt when the dataset knows them (the embedded domain does).
    ``extra`` carries what complexity metrics need (MACs per image, timings, expert ids, ...).
    """

    prompts: list[str]
    images: Any
    real_images: Any = None
    attributes: list[dict[str, Any]] | None = None
    extra: dict[str, Any] = field(default_factory=dict)


Scheduler = Literal["pndm", "ddim", "dpm_solver", "euler", "ddpm", "pipeline"]


@dataclass
class EvalConfig:
    """The ``eval:`` options of a method (``method.eval`` in an APTP recipe)."""

    prompts: int = option(1000, ge=0, help="evaluation prompts drawn from the eval dataset (0 = all of it)")
    steps: int = option(25, ge=1, help="sampler steps (paper: 25)")
    guidance_scale: float = option(7.5, ge=0, help="classifier-free guidance (paper: 7.5)")
    scheduler: Scheduler = option("pndm", help="sampler (paper: pndm); 'pipeline' keeps the model's own")
    resolution: int | None = option(None, ge=8, help="generation size in pixels (default: the model's native size)")
    resize: int | None = option(None, ge=8, help="size metrics see (default: the eval dataset's images)")
    seed: int = option(0, ge=0, help="image i is generated from seed + i")
    batch_size: int = option(8, ge=1, help="prompts per generation call")
    metric_batch: int = option(64, ge=1, help="images per metric update (metrics stream; no image set is held whole)")
    teacher: bool = option(True, help="also evaluate the unpruned model, for the teacher-vs-pruned table")
    dataset: dict[str, Any] | None = option(None, help="eval split: a dataset section (default: the recipe's dataset)")
    samples_per_expert: int = option(4, ge=0, help="images per expert in the report's sample grid")
    max_skipped_fraction: float = option(
        0.01, ge=0, le=1, help="stop when more than this share of the drawn eval rows cannot be read")


@dataclass
class Generation:
    """What :func:`generate` returns: uint8 images (N, 3, H, W) in prompt order, the expert of each
    image (None for a single pipeline) and the wall-clock seconds spent."""

    images: Any
    experts: list[int] | None
    seconds: float
    height: int
    width: int

    @property
    def seconds_per_image(self) -> float:
        return self.seconds / max(1, len(self.images))


# -- generation -------------------------------------------------------------------------------------

def _scheduler_class(name: str) -> Any:
    import diffusers

    return {
        "pndm": diffusers.PNDMScheduler,
        "ddim": diffusers.DDIMScheduler,
        "dpm_solver": diffusers.DPMSolverMultistepScheduler,
        "euler": diffusers.EulerDiscreteScheduler,
        "ddpm": diffusers.DDPMScheduler,
    }[name]


def is_routed(pipeline: Any) -> bool:
    from prunekit.pipeline import PromptRoutedPipeline

    return isinstance(pipeline, PromptRoutedPipeline)


def with_scheduler(pipeline: Any, name: str) -> Any:
    """A pipeline sharing every module of ``pipeline`` but sampling with scheduler ``name``.

    The input pipeline is left untouched (training keeps its DDPM scheduler). PNDM always skips its
    Runge-Kutta warm-up steps, as SD's shipped PNDM config does: then ``steps`` U-Net calls are
    ``steps`` sampler steps, and fewer than ~4 steps work at all.
    """
    if name == "pipeline":
        return pipeline
    if is_routed(pipeline):
        from prunekit.pipeline import PromptRoutedPipeline

        base = with_scheduler(pipeline.base, name)
        return PromptRoutedPipeline(base, pipeline.prompt_encoder, pipeline.router, pipeline.experts, pipeline.manifest)
    extra = {"skip_prk_steps": True} if name == "pndm" else {}
    scheduler = _scheduler_class(name).from_config(pipeline.scheduler.config, **extra)
    swapped = same_dtype_pipe(pipeline, scheduler=scheduler)
    swapped.set_progress_bar_config(disable=True)
    return swapped


def same_dtype_pipe(pipeline: Any, **components: Any) -> Any:
    """``from_pipe`` with some components replaced, keeping the pipeline's dtype (diffusers' own
    ``from_pipe`` casts every module to float32 unless told otherwise)."""
    from prunekit.models import dtype_keyword

    return type(pipeline).from_pipe(pipeline, **components, **{dtype_keyword(): pipeline.unet.dtype})


def expert_pipeline(routed: Any, index: int) -> Any:
    """The plain diffusers pipeline of one expert of a :class:`PromptRoutedPipeline`."""
    swapped = same_dtype_pipe(routed.base, unet=routed.experts[index])
    swapped.set_progress_bar_config(disable=True)
    return swapped


def native_resolution(pipeline: Any) -> int:
    base = pipeline.base if is_routed(pipeline) else pipeline
    return int(base.unet.config.sample_size) * int(getattr(base, "vae_scale_factor", 8))


def to_uint8(images: Any) -> Any:
    """(N, H, W, 3) floats in [0, 1] (diffusers' ``output_type="np"``) → uint8 tensor (N, 3, H, W)."""
    import numpy as np
    import torch

    array = np.clip(np.round(np.asarray(images, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
    return torch.from_numpy(array).permute(0, 3, 1, 2).contiguous()


def resize_uint8(images: Any, size: int) -> Any:
    """Square-resize uint8 images (N, 3, H, W) with PIL bicubic (as BK-SDM / APTP do before metrics)."""
    import numpy as np
    import torch
    from PIL import Image

    if images.shape[-1] == size and images.shape[-2] == size:
        return images
    out = [np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy()).resize((size, size), Image.BICUBIC))
           for img in images.cpu()]
    return torch.from_numpy(np.stack(out)).permute(0, 3, 1, 2).contiguous()


def generate(pipeline: Any, prompts: Sequence[str], config: EvalConfig | None = None, *,
             log: logging.Logger | None = None, collective: bool = False) -> Generation:
    """Generate one image per prompt, in prompt order, with ``config``'s sampler settings.

    ``pipeline`` is a diffusers text-to-image pipeline or a :class:`PromptRoutedPipeline` (then each
    image's expert is returned too). Images are resized to ``config.resize`` when it is set.
    ``collective``: every rank calls this with the same prompts; each generates a contiguous share
    (image ``i`` still from seed ``seed + i``) and every rank gets all images, in prompt order.
    """
    from prunekit import distributed

    if collective and distributed.world_size() > 1:
        import torch

        prompts = list(prompts)
        share = distributed.shard(len(prompts))
        local = _generate(pipeline, prompts[share.start:share.stop], config, log=log, first_index=share.start)
        parts = distributed.all_gather((local.images, local.experts, local.seconds))
        images = torch.cat([p[0] for p in parts])
        experts = None if local.experts is None else [e for p in parts for e in p[1]]
        return Generation(images, experts, max(p[2] for p in parts), local.height, local.width)
    return _generate(pipeline, prompts, config, log=log)


def _batch_caller(pipeline: Any, config: EvalConfig) -> tuple[Callable[[list[str], list[int]], tuple[list[Any], list[int] | None]], int]:
    """``(call, size)``: ``call(prompts, seeds)`` generates one batch (uint8 HxWx3 arrays, experts or
    None) with ``config``'s sampler at ``size`` pixels."""
    import numpy as np
    import torch

    pipe = with_scheduler(pipeline, config.scheduler)
    routed = is_routed(pipe)
    size = config.resolution or native_resolution(pipe)
    kwargs = dict(num_inference_steps=config.steps, guidance_scale=config.guidance_scale, height=size, width=size,
                  output_type="np")

    def call(chunk: list[str], seeds: list[int]) -> tuple[list[Any], list[int] | None]:
        if routed:
            out = pipe(chunk, seed=seeds, **kwargs)
            experts: list[int] | None = [int(e) for e in out.experts]
        else:
            generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
            out = pipe(chunk, generator=generators, **kwargs)
            experts = None
        arrays = [np.clip(np.round(np.asarray(img, dtype=np.float32) * 255.0), 0, 255).astype(np.uint8)
                  for img in out.images]
        return arrays, experts

    return call, size


def _generate(pipeline: Any, prompts: Sequence[str], config: EvalConfig | None = None, *,
              log: logging.Logger | None = None, first_index: int = 0) -> Generation:
    import numpy as np
    import torch

    config = config or EvalConfig()
    log = log or LOG
    call, size = _batch_caller(pipeline, config)
    routed = is_routed(pipeline)
    images: list[Any] = []
    experts: list[int] = []
    prompts = list(prompts)
    start = time.perf_counter()
    for first in range(0, len(prompts), config.batch_size):
        chunk = prompts[first:first + config.batch_size]
        arrays, chunk_experts = call(chunk, [config.seed + first_index + first + k for k in range(len(chunk))])
        images.extend(arrays)
        experts.extend(chunk_experts or [])
        log.debug("generated %d/%d images", min(first + len(chunk), len(prompts)), len(prompts))
    seconds = time.perf_counter() - start
    tensor = (torch.from_numpy(np.stack(images)).permute(0, 3, 1, 2).contiguous() if images
              else torch.zeros((0, 3, size, size), dtype=torch.uint8))
    if config.resize:
        tensor = resize_uint8(tensor, config.resize)
    return Generation(tensor, experts if routed else None, seconds, size, size)


# -- data --------------------------------------------------------------------------------------------

def select_indices(total: int, count: int, seed: int) -> list[int]:
    """``count`` distinct rows out of ``total`` (all when ``count`` is 0 or too large), drawn with
    ``seed`` and sorted, so the subset spans the whole dataset rather than its first rows."""
    import random

    if count == 0 or count >= total:
        return list(range(total))
    return sorted(random.Random(seed).sample(range(total), count))


def eval_data_source(dataset: Any, indices: Sequence[int]) -> tuple[list[str], Any, list[dict[str, Any]] | None]:
    """Prompts, real images (an image source that decodes them chunk by chunk, or None for a
    prompt-only dataset) and attributes of ``indices``: what :func:`load_eval_data` returns, without
    holding the images."""
    from prunekit.eval_images import DatasetImages

    indices = list(indices)
    if not indices:
        return [], None, None
    first = dataset[indices[0]]
    if "image" not in first or not hasattr(dataset, "prompts"):
        return load_eval_data(dataset, indices)
    prompts = [str(dataset.prompts[i]) for i in indices]
    known = getattr(dataset, "attributes", None)
    attributes = [dict(known[i]) if known is not None and isinstance(known[i], Mapping) else None for i in indices]
    if known is None and isinstance(first.get("attributes"), Mapping):
        attributes = [dict(dataset[i]["attributes"]) for i in indices]
    return prompts, DatasetImages(dataset, indices), attributes if all(a is not None for a in attributes) else None


def load_eval_data(dataset: Any, indices: Sequence[int]) -> tuple[list[str], Any, list[dict[str, Any]] | None]:
    """Prompts, real images (uint8, or None for a prompt-only dataset) and attributes of ``indices``."""
    import torch

    prompts, images, attributes = [], [], []
    known = getattr(dataset, "attributes", None)
    for i in indices:
        item = dataset[i]
        prompts.append(str(item["prompt"]))
        if "image" in item:
            images.append(((item["image"].float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8))
        attrs = item.get("attributes")
        if attrs is None and known is not None and isinstance(known[i], Mapping):
            attrs = known[i]
        attributes.append(dict(attrs) if isinstance(attrs, Mapping) else None)
    real = torch.stack(images) if images and len(images) == len(prompts) else None
    return prompts, real, attributes if all(a is not None for a in attributes) else None


# -- metrics -------------------------------------------------------------------------------------------

def _plain(value: Any) -> Any:
    if hasattr(value, "item") and getattr(value, "numel", lambda: 2)() == 1:
        return value.item()
    if hasattr(value, "tolist"):
        return value.tolist()
    return value


def run_metrics(metrics: Mapping[str, Callable[[EvalBatch], Mapping[str, Any]]], batch: EvalBatch) -> dict[str, Any]:
    """Call every metric on ``batch``; one flat dict of their values (a key reported twice is an error)."""
    from prunekit.errors import PluginError

    values: dict[str, Any] = {}
    owner: dict[str, str] = {}
    for name, metric in metrics.items():
        start = time.perf_counter()
        result = metric(batch)
        if not isinstance(result, Mapping):
            raise PluginError(f"metric {name!r} returned {type(result).__name__}; expected a dict of values")
        for key, value in result.items():
            if key in values:
                raise PluginError(f"metrics {owner[key]!r} and {name!r} both report {key!r}")
            values[key], owner[key] = _plain(value), name
        LOG.debug("metric %s: %.2f s", name, time.perf_counter() - start)
    return values


def _subset(batch: EvalBatch, idx: list[int], extra: dict[str, Any]) -> EvalBatch:
    import torch

    rows = torch.tensor(idx, dtype=torch.long)
    return EvalBatch(
        prompts=[batch.prompts[i] for i in idx],
        images=batch.images[rows],
        real_images=None if batch.real_images is None else batch.real_images[rows],
        attributes=None if batch.attributes is None else [batch.attributes[i] for i in idx],
        extra={**batch.extra, **extra},
    )


class _Collector:
    """One flat dict of metric values; a key reported by two metrics is an error."""

    def __init__(self) -> None:
        self.values: dict[str, Any] = {}
        self._owner: dict[str, str] = {}

    def add(self, name: str, result: Any) -> None:
        from prunekit.errors import PluginError

        if not isinstance(result, Mapping):
            raise PluginError(f"metric {name!r} returned {type(result).__name__}; expected a dict of values")
        for key, value in result.items():
            if key in self.values:
                raise PluginError(f"metrics {self._owner[key]!r} and {name!r} both report {key!r}")
            self.values[key], self._owner[key] = _plain(value), name


def _score(metrics: Mapping[str, Any], prompts: list[str], images: Any, real: Any, attributes: Any,
           extra: dict[str, Any], experts: list[int] | None, n_experts: int, config: EvalConfig,
           expert_extra: Callable[[int], dict[str, Any]]) -> tuple[dict[str, Any], dict[int, dict[str, Any]]]:
    """Values of ``metrics`` over all images, and per expert (experts with two images or more).

    A metric with ``accumulator()`` is fed ``config.metric_batch`` images at a time (generated ones
    read from ``images``, real ones from ``real``), so no image set is ever held whole; any other
    metric is called once on the whole batch (``needs_images = False`` spares it the images).
    """
    n = len(prompts)
    streaming = {k: m for k, m in metrics.items() if hasattr(m, "accumulator")}
    whole = {k: m for k, m in metrics.items() if k not in streaming}
    members = {e: [i for i, x in enumerate(experts) if x == e] for e in range(n_experts)} if experts is not None else {}
    scored = [e for e, idx in members.items() if len(idx) >= 2]

    def batch_of(idx: Sequence[int], extra_: dict[str, Any]) -> EvalBatch:
        gen = images.take(idx)
        ref = None if real is None else real.take(idx)
        if config.resize:
            gen = resize_uint8(gen, config.resize)
            ref = None if ref is None else resize_uint8(ref, config.resize)
        return EvalBatch([prompts[i] for i in idx], gen, ref,
                         None if attributes is None else [attributes[i] for i in idx], extra_)

    total, per_expert = _Collector(), {e: _Collector() for e in scored}
    if streaming:
        accs = {k: m.accumulator() for k, m in streaming.items()}
        expert_accs = {e: {k: m.accumulator() for k, m in streaming.items() if getattr(m, "per_expert", True)}
                       for e in scored}
        expert_extras = {e: {**extra, **expert_extra(e)} for e in scored}
        for start in range(0, n, config.metric_batch):
            idx = list(range(start, min(n, start + config.metric_batch)))
            batch = batch_of(idx, extra)
            for acc in accs.values():
                acc.update(batch)
            for e, group in expert_accs.items():
                rows = [k for k, i in enumerate(idx) if experts[i] == e]
                if rows and group:
                    sub = _subset(batch, rows, expert_extras[e])
                    for acc in group.values():
                        acc.update(sub)
        for k, acc in accs.items():
            total.add(k, acc.compute())
        for e, group in expert_accs.items():
            for k, acc in group.items():
                per_expert[e].add(k, acc.compute())
    if whole:
        needs = any(getattr(m, "needs_images", True) for m in whole.values())
        full = batch_of(range(n), extra) if needs else EvalBatch(list(prompts), None, None, attributes, extra)
        for k, m in whole.items():
            start = time.perf_counter()
            total.add(k, m(full))
            LOG.debug("metric %s: %.2f s", k, time.perf_counter() - start)
        per_image = {k: m for k, m in whole.items() if getattr(m, "per_expert", True)}
        for e in scored if per_image else []:
            sub = _subset(full, members[e], expert_extra(e))
            for k, m in per_image.items():
                per_expert[e].add(k, m(sub))
    return total.values, {e: c.values for e, c in per_expert.items()}


def evaluate(pipeline: Any, prompts: Sequence[str], metrics: Mapping[str, Callable[[EvalBatch], Mapping[str, Any]]],
             config: EvalConfig | None = None, *, real_images: Any = None,
             attributes: list[dict[str, Any]] | None = None, extra: Mapping[str, Any] | None = None,
             role: str | None = None, log: logging.Logger | None = None, collective: bool = False,
             folder: str | Path | None = None) -> dict[str, Any]:
    """Generate for ``prompts`` with ``pipeline`` and run ``metrics``.

    Returns ``{"metrics": {...}, "generation": {...}}`` plus, for a routed pipeline, ``"experts"``: per
    expert the number and share of images routed to it and the per-expert metrics computed on them
    (experts with fewer than two images get none). ``real_images``: a uint8 tensor or an image source
    (:mod:`prunekit.eval_images`); generated and real images are resized to ``config.resize``
    (default: the real images' size) before any metric.

    ``folder``: images are written to ``folder/<role>/`` as they are generated and a killed evaluation
    resumes without regenerating them; metrics then read them back in chunks. ``collective``: every
    rank calls this; generation is split over the ranks, the metrics run on rank 0 (the other ranks
    return empty metrics).
    """
    from dataclasses import replace

    from prunekit import distributed
    from prunekit.eval_images import TensorImages, generate_to_folder

    config = config or EvalConfig()
    log = log or LOG
    import torch

    real = TensorImages(real_images) if isinstance(real_images, torch.Tensor) else real_images
    if config.resize is None and real is not None and real.size:
        config = replace(config, resize=int(real.size))
    routed = is_routed(pipeline)
    role = role or ("mixture" if routed else "model")
    log.info("evaluate %s: generating %d images (%s, %d steps, guidance %g)", role, len(prompts), config.scheduler,
             config.steps, config.guidance_scale)
    prompts = list(prompts)
    if folder is not None:
        call, size = _batch_caller(pipeline, config)
        images, experts, seconds = generate_to_folder(call, prompts, Path(folder) / role, batch_size=config.batch_size,
                                                      seed=config.seed, collective=collective, log=log)
    else:
        generation = generate(pipeline, prompts, replace(config, resize=None), log=log, collective=collective)
        images, experts, seconds, size = TensorImages(generation.images), generation.experts, generation.seconds, generation.height
    if collective and not distributed.is_main():
        return {"metrics": {}, "generation": {}, "experts": []}
    pipe = with_scheduler(pipeline, config.scheduler)
    per_image_seconds = seconds / len(prompts) if prompts else 0.0
    extra_all = {**(extra or {}), "role": role, "pipeline": pipe, "config": config, "experts": experts,
                 "height": size, "width": size, "generation_seconds_per_image": per_image_seconds,
                 "manifest": pipeline.manifest if routed else None}
    n_experts = len(pipeline.experts) if routed else 0
    values, per_expert = _score(metrics, prompts, images, real, attributes, extra_all, experts, n_experts, config,
                                lambda e: {"role": "expert", "expert": e, "pipeline": expert_pipeline(pipe, e)})
    result: dict[str, Any] = {
        "metrics": values,
        "generation": {"images": len(prompts), "height": size, "width": size,
                       "metric_size": (config.resize or size) if prompts else None,
                       "seconds": round(seconds, 3), "seconds_per_image": round(per_image_seconds, 4)},
    }
    if routed:
        result["experts"] = []
        for expert in range(n_experts):
            count = sum(1 for e in experts or [] if e == expert)
            result["experts"].append({"expert": expert, "images": count, "share": count / max(1, len(prompts)),
                                      "metrics": per_expert.get(expert, {})})
    return result


# -- a run or mixture ------------------------------------------------------------------------------------

def eval_config(recipe_data: Mapping[str, Any]) -> EvalConfig:
    from prunekit.config import instantiate_schema

    return instantiate_schema(EvalConfig, (recipe_data.get("method") or {}).get("eval") or {})


def _eval_dataset_section(recipe_data: Mapping[str, Any]) -> dict[str, Any] | None:
    section = eval_config(recipe_data).dataset or recipe_data.get("dataset")
    return dict(section) if section else None


def preflight_metrics(recipe_data: Mapping[str, Any], registry: Any) -> list[str]:
    """Machine-specific problems of a recipe's ``metrics:`` section and eval dataset (weights and data
    paths that do not exist here), one line each, found before any heavy import."""
    from prunekit.config import instantiate_schema, validate_options
    from prunekit.registry import unknown_name_message

    problems: list[str] = []
    for name, options in (recipe_data.get("metrics") or {}).items():
        component = registry.find("metric", str(name))
        if options is None or component is None or component.schema is None:
            continue
        if hasattr(component.schema, "preflight"):
            problems.extend(instantiate_schema(component.schema, options).preflight() or [])
    if recipe_data.get("metrics") and not _eval_dataset_section(recipe_data):
        problems.append("method.eval.dataset: the recipe has metrics but no dataset to take prompts and real "
                        "images from (set method.eval.dataset or a dataset section)")
    section = eval_config(recipe_data).dataset
    if section:
        where = "method.eval.dataset"
        component = registry.find("dataset", str(section.get("name")))
        if component is None:
            return [*problems, f"{where}.name: {unknown_name_message('dataset', str(section.get('name')), registry.names('dataset'))}"]
        options = {k: v for k, v in section.items() if k != "name"}
        if component.schema is not None:
            invalid = validate_options(component.schema, options, where)
            if invalid:
                return [*problems, *invalid]
            if hasattr(component.schema, "preflight"):
                # A dataset's preflight names its keys as in a `dataset:` section; here they live under `where`.
                problems.extend(p.replace("set dataset.", f"set {where}.")
                                for p in instantiate_schema(component.schema, options).preflight() or [])
    return problems


def build_metrics(recipe_data: Mapping[str, Any], registry: Any) -> dict[str, Any]:
    return {str(name): registry.build("metric", {"name": name, **options})
            for name, options in (recipe_data.get("metrics") or {}).items() if options is not None}


def load_mixture(mixture_dir: str | Path, registry: Any, *, base: Any = None, device: str | None = None) -> Any:
    """The :class:`PromptRoutedPipeline` of a mixture folder (``base``: reuse an already loaded model)."""
    from prunekit.pipeline import PromptRoutedPipeline

    if device is None:
        device = str(base.device) if base is not None else "cpu"
    return PromptRoutedPipeline.from_pretrained(mixture_dir, device=device, registry=registry, base=base)


def _eval_setup(recipe_data: Mapping[str, Any], registry: Any, log: logging.Logger,
                collective: bool = False) -> tuple[Any, ...]:
    """The recipe's eval settings, metric plugins, prompts, real images, attributes, and what was
    skipped: drawn rows whose image cannot be read or whose caption is empty are left out (counted
    by reason, the first few named in the log), and beyond ``method.eval.max_skipped_fraction`` the
    evaluation stops with one line."""
    from prunekit.data import check_skipped, usable_rows
    from prunekit.errors import RecipeError

    config = eval_config(recipe_data)
    metrics = build_metrics(recipe_data, registry)
    if not metrics:
        raise RecipeError(["metrics: the recipe selects no metric plugin (e.g. metrics: {fid: {inception_weights: ...}})"])
    section = _eval_dataset_section(recipe_data)
    if not section:
        raise RecipeError(["method.eval.dataset: no eval dataset (and the recipe has no dataset section)"])
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
                  option="method.eval.max_skipped_fraction")
    prompts, real, attributes = eval_data_source(dataset, indices)
    log.info("evaluate: %d prompts from dataset %r; metrics %s", len(prompts), section["name"], ", ".join(metrics))
    return config, metrics, section, prompts, real, attributes, data


def evaluate_mixture(mixture_dir: str | Path, recipe_data: Mapping[str, Any], registry: Any, *, base: Any = None,
                     device: str | None = None, log: logging.Logger | None = None,
                     collective: bool = False, folder: str | Path | None = None) -> dict[str, Any]:
    """Evaluate a mixture (and, by default, its teacher) with the recipe's metrics and ``method.eval``.

    Returns a JSON-able dict: ``settings``, ``prompts``, ``data`` (eval rows drawn, used and skipped
    by reason), ``teacher`` and ``mixture`` (each ``{"metrics", "generation"}``) and ``experts``
    (per-expert image counts and metrics).
    """
    log = log or LOG
    config, metrics, section, prompts, real, attributes, data = _eval_setup(recipe_data, registry, log, collective)
    mixture = load_mixture(mixture_dir, registry, base=base, device=device)
    out: dict[str, Any] = {"settings": {**asdict(config), "dataset": section}, "prompts": len(prompts), "data": data}
    if config.teacher:
        out["teacher"] = evaluate(mixture.base, prompts, metrics, config, real_images=real, attributes=attributes,
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
    ``method.eval.teacher`` is on, ``teacher()`` (the unmodified model) on the same prompts and noise.

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


def write_samples(pipeline: Any, prompts_by_expert: Mapping[int, Sequence[str]], folder: str | Path,
                  config: EvalConfig | None = None) -> list[dict[str, Any]]:
    """Generate the report's sample grid: for each expert, images of prompts routed to it.

    Writes ``expert_XX_k.png`` and ``samples.json`` (prompt, expert asked for, expert it was routed to)
    into ``folder``, replacing earlier samples.
    """
    from PIL import Image

    from prunekit.run import atomic_write_json

    config = config or EvalConfig()
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("expert_*.png"):
        old.unlink()
    flat = [(expert, k, prompt) for expert, prompts in sorted(prompts_by_expert.items())
            for k, prompt in enumerate(prompts)]
    from dataclasses import replace

    generation = generate(pipeline, [p for _, _, p in flat], replace(config, resize=None))
    entries = []
    for n, (expert, k, prompt) in enumerate(flat):
        name = f"expert_{expert:02d}_{k}.png"
        Image.fromarray(generation.images[n].permute(1, 2, 0).numpy()).save(folder / name)
        routed = generation.experts[n] if generation.experts is not None else expert
        entries.append({"expert": expert, "routed_to": routed, "prompt": prompt, "file": name})
    atomic_write_json(folder / "samples.json", entries)
    return entries


def routed_prompts(run_dir: str | Path) -> tuple[list[str], list[int]]:
    """The training prompts of an APTP run and the expert each was routed to (``route`` stage)."""
    from prunekit.shards import EncodedShards

    artifacts = Path(run_dir) / "artifacts"
    prompts = EncodedShards(artifacts / "encoded").prompts
    experts = json.loads((artifacts / "routing.json").read_text())["expert_of_sample"]
    return prompts, [int(e) for e in experts]


def write_run_samples(run_dir: str | Path, recipe_data: Mapping[str, Any], registry: Any, *, base: Any = None,
                      mixture: Any = None) -> list[dict[str, Any]]:
    """Samples per expert of an APTP run, from the first training prompts routed to each expert."""
    config = eval_config(recipe_data)
    prompts, experts = routed_prompts(run_dir)
    by_expert: dict[int, list[str]] = {}
    for prompt, expert in zip(prompts, experts):
        if len(by_expert.setdefault(expert, [])) < config.samples_per_expert:
            by_expert[expert].append(prompt)
    if not by_expert or config.samples_per_expert == 0:
        return []
    mixture = mixture or load_mixture(Path(run_dir) / "artifacts" / "mixture", registry, base=base)
    return write_samples(mixture, by_expert, Path(run_dir) / "artifacts" / SAMPLES_DIR, config)


def _saved_evaluation(run: Any, evaluate_fn: Callable[[], dict[str, Any]]) -> dict[str, Any]:
    """Run ``evaluate_fn`` on every rank (generation is split over them), write rank 0's result to
    ``artifacts/evaluation.json``; every rank returns it."""
    from prunekit import distributed
    from prunekit.run import atomic_write_json

    result = evaluate_fn()
    if run.is_main:
        atomic_write_json(run.artifact(EVALUATION_FILE), result)
    return distributed.broadcast(result)


def evaluate_run_stage(run: Any, *, base: Any = None) -> dict[str, Any]:
    """The ``evaluate`` stage of a run: evaluation of ``artifacts/mixture`` → ``artifacts/evaluation.json``."""
    return _saved_evaluation(run, lambda: evaluate_mixture(run.artifact("mixture"), run.recipe.data, run.registry,
                                                           base=base, log=run.log, collective=True,
                                                           folder=run.artifact(EVAL_IMAGES_DIR)))


def evaluate_pipeline_stage(run: Any, pipeline: Any) -> dict[str, Any]:
    """The ``evaluate`` stage of a method that ends with one pipeline (dense fine-tuning, post-training
    sparsity): ``pipeline`` against a fresh build of the recipe's model → ``artifacts/evaluation.json``."""
    return _saved_evaluation(run, lambda: evaluate_pipeline(pipeline, run.recipe.data, run.registry,
                                                            teacher=lambda: run.build("model"), log=run.log,
                                                            collective=True, folder=run.artifact(EVAL_IMAGES_DIR)))


# -- CLI -------------------------------------------------------------------------------------------------

def add_eval_arguments(parser: Any) -> None:
    """Arguments of ``prunekit eval``."""
    parser.add_argument("path", help="run directory (runs/NAME) or mixture folder (.../artifacts/mixture)")
    parser.add_argument("overrides", nargs="*",
                        help="dotlist overrides of the run's recipe, e.g. metrics.fid.inception_weights=/w/inception.pth")
    parser.add_argument("--recipe", help="recipe giving metrics, method.eval and dataset (default: the run's recipe.yaml)")
    parser.add_argument("--output", "-o", help="JSON file for the results (default: the run's artifacts/evaluation.json, "
                                               "or MIXTURE/evaluation.json)")
    parser.add_argument("--device", default=None, help="device for generation (default: the model section's)")


def _locate(path: Path) -> tuple[Path, Path | None]:
    from prunekit.errors import MissingPathError

    if (path / "artifacts" / "mixture" / "manifest.json").is_file():
        return path / "artifacts" / "mixture", path
    if (path / "manifest.json").is_file():
        run_dir = path.parent.parent
        return path, run_dir if (run_dir / "recipe.yaml").is_file() and path.parent.name == "artifacts" else None
    raise MissingPathError(f"{path} is neither a run directory with artifacts/mixture nor a mixture folder")


def _print_summary(result: Mapping[str, Any]) -> None:
    rows = [("teacher", result.get("teacher", {}).get("metrics", {})), ("mixture", result["mixture"]["metrics"])]
    rows += [(f"expert {e['expert']} ({e['images']} img)", e.get("metrics", {})) for e in result.get("experts", [])]
    keys = list(dict.fromkeys(k for _, m in rows for k in m))
    for label, values in rows:
        shown = ", ".join(f"{k}={v:.4g}" if isinstance(v, float) else f"{k}={v}" for k, v in values.items() if k in keys)
        print(f"{label}: {shown}")


def main_eval(args: Any) -> int:
    """``prunekit eval PATH [overrides]``: evaluate a run's mixture again (updates its metrics and report).
    A run directory is held (its ``run.lock``) meanwhile, as a run holds it."""
    from prunekit.run import holding

    _, run_dir = _locate(Path(args.path))
    if run_dir is None:
        return _main_eval(args)
    with holding(run_dir, action="eval"):
        return _main_eval(args)


def _main_eval(args: Any) -> int:
    from prunekit.errors import MissingPathError
    from prunekit.recipe import load_recipe
    from prunekit.registry import get_registry
    from prunekit.run import atomic_write_json

    mixture_dir, run_dir = _locate(Path(args.path))
    recipe_file = Path(args.recipe) if args.recipe else (run_dir / "recipe.yaml" if run_dir else None)
    if recipe_file is None:
        raise MissingPathError(f"{mixture_dir} is not inside a run directory; pass --recipe R.yaml with the metrics to use")
    registry = get_registry()
    recipe = load_recipe(recipe_file, list(args.overrides or []), registry=registry)
    problems = preflight_metrics(recipe.data, registry)
    if problems:
        raise MissingPathError("\n".join(problems))
    from prunekit.runner import quiet_libraries

    quiet_libraries()
    result = evaluate_mixture(mixture_dir, recipe.data, registry, device=args.device)
    output = Path(args.output) if args.output else (run_dir / "artifacts" / EVALUATION_FILE if run_dir
                                                    else mixture_dir / EVALUATION_FILE)
    atomic_write_json(output, result)
    print(f"wrote {output}")
    if run_dir is not None and not args.output:
        metrics_file = run_dir / "metrics.json"
        metrics = json.loads(metrics_file.read_text()) if metrics_file.is_file() else {}
        atomic_write_json(metrics_file, merge_evaluation(metrics, result))
        from prunekit.report import build_report

        print(f"wrote {build_report(run_dir)}")
    _print_summary(result)
    return 0
