"""Scoring: run the recipe's ``metric`` plugins on generated images.

A metric plugin builds a callable ``metric(batch: EvalBatch) -> dict[str, value]`` (values are numbers
or short strings; keys must be unique across the metrics of a recipe). A metric object may set
``per_expert = False`` when it describes a whole pipeline (MACs, latency) rather than a set of images;
the others also run on the images of each expert of a mixture.

Per-image scores (optional): a metric whose value is a mean over images (CLIP score, the share of
images judged aligned) may define ``per_image(batch) -> {key: [score of each image of the batch]}``,
with None where a key does not apply to an image (a per-category key). It is called on
``eval.metric_batch`` images at a time; the scores are kept, in prompt order, under the result's
``per_image`` (the report bootstraps confidence intervals from them). Metrics without it are scored
exactly as before.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prunekit.eval_config import EvalConfig
from prunekit.evaluation.generation import (
    _batch_caller,
    expert_pipeline,
    generate,
    is_routed,
    resize_uint8,
    with_scheduler,
)

LOG = logging.getLogger("prunekit")


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


def _score_value(value: Any) -> float | None:
    """A per-image score as kept in the result: a finite float (6 significant digits), else None."""
    import math

    value = _plain(value)
    if value is None or isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        return None
    return float(f"{float(value):.6g}")


def per_image_scores(metrics: Mapping[str, Any], batches: Any) -> dict[str, list[float | None]]:
    """The per-image scores of the metrics that define ``per_image(batch)``, over ``batches`` (an
    iterable of :class:`EvalBatch`, in prompt order): ``{key: [score or None per image]}``. A key two
    metrics report, or a list whose length is not the batch's, is an error."""
    from prunekit.errors import PluginError

    providers = {k: m.per_image for k, m in metrics.items() if callable(getattr(m, "per_image", None))}
    scores: dict[str, list[float | None]] = {}
    owner: dict[str, str] = {}
    done = 0
    for batch in batches if providers else ():
        size = len(batch.prompts)
        for name, provider in providers.items():
            result = provider(batch)
            if not isinstance(result, Mapping):
                raise PluginError(f"metric {name!r}: per_image returned {type(result).__name__}; expected a dict of lists")
            for key, values in result.items():
                if owner.setdefault(key, name) != name:
                    raise PluginError(f"metrics {owner[key]!r} and {name!r} both report per-image {key!r}")
                values = list(_plain(values))
                if len(values) != size:
                    raise PluginError(f"metric {name!r}: per_image {key!r} has {len(values)} scores for {size} images")
                column = scores.setdefault(key, [None] * done)
                column.extend(_score_value(v) for v in values)
        done += size
        for column in scores.values():  # keys a batch did not report
            column.extend([None] * (done - len(column)))
    return scores


def experts_by_category(attributes: Sequence[Mapping[str, Any]] | None, experts: Sequence[int] | None,
                        n_experts: int) -> dict[str, list[int]] | None:
    """How many prompts of each category (``attributes[i]["category"]``) were routed to each expert:
    ``{category: [count for expert 0, 1, ...]}``, categories sorted; None without categories or experts."""
    if experts is None or not attributes or len(attributes) != len(experts):
        return None
    categories = [a.get("category") if isinstance(a, Mapping) else None for a in attributes]
    if any(c is None for c in categories):
        return None
    table = {str(c): [0] * n_experts for c in sorted({str(c) for c in categories})}
    for category, expert in zip(categories, experts):
        table[str(category)][int(expert)] += 1
    return table


def complexity_by_expert(attributes: Sequence[Mapping[str, Any]] | None, experts: Sequence[int] | None,
                         manifest: Mapping[str, Any] | None) -> dict[str, Any] | None:
    """Do harder eval prompts go to bigger experts? Spearman's rho between each prompt's complexity
    (``attributes[i]["complexity"]``) and the MACs ratio of the expert it was routed to (the
    manifest's), with the mean complexity per expert; None without complexities, routes or ratios."""
    from prunekit.metrics import spearman

    if experts is None or not attributes or len(attributes) != len(experts) or not manifest:
        return None
    values = [a.get("complexity") if isinstance(a, Mapping) else None for a in attributes]
    ratios = {int(e["id"]): float(e["macs_ratio"]) for e in manifest.get("experts", [])
              if "id" in e and e.get("macs_ratio") is not None}
    if any(v is None for v in values) or any(int(e) not in ratios for e in experts):
        return None
    complexity = [float(v) for v in values]  # type: ignore[arg-type]
    routed = [ratios[int(e)] for e in experts]
    means = []
    for expert in sorted(ratios):
        mine = [c for c, e in zip(complexity, experts) if int(e) == expert]
        means.append(sum(mine) / len(mine) if mine else None)
    return {"spearman": spearman(complexity, routed), "prompts": len(complexity),
            "macs_ratio_by_expert": [ratios[e] for e in sorted(ratios)], "mean_complexity_by_expert": means}


def _score(metrics: Mapping[str, Any], prompts: list[str], images: Any, real: Any, attributes: Any,
           extra: dict[str, Any], experts: list[int] | None, n_experts: int, config: EvalConfig,
           expert_extra: Callable[[int], dict[str, Any]]) -> tuple[dict[str, Any], dict[int, dict[str, Any]],
                                                                   dict[str, list[float | None]]]:
    """Values of ``metrics`` over all images, per expert (experts with two images or more), and the
    per-image scores of the metrics that give them (:func:`per_image_scores`).

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
                assert experts is not None  # expert_accs is empty when there are no experts
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
            started = time.perf_counter()
            total.add(k, m(full))
            LOG.debug("metric %s: %.2f s", k, time.perf_counter() - started)
        per_image = {k: m for k, m in whole.items() if getattr(m, "per_expert", True)}
        for e in scored if per_image else []:
            sub = _subset(full, members[e], expert_extra(e))
            for k, m in per_image.items():
                per_expert[e].add(k, m(sub))
    chunks = (batch_of(list(range(start, min(n, start + config.metric_batch))), extra)
              for start in range(0, n, config.metric_batch))
    scores = per_image_scores(metrics, chunks)
    return total.values, {e: c.values for e, c in per_expert.items()}, scores


def evaluate(pipeline: Any, prompts: Sequence[str], metrics: Mapping[str, Callable[[EvalBatch], Mapping[str, Any]]],
             config: EvalConfig | None = None, *, real_images: Any = None,
             attributes: list[dict[str, Any]] | None = None, extra: Mapping[str, Any] | None = None,
             role: str | None = None, log: logging.Logger | None = None, collective: bool = False,
             folder: str | Path | None = None) -> dict[str, Any]:
    """Generate for ``prompts`` with ``pipeline`` and run ``metrics``.

    Returns ``{"metrics": {...}, "generation": {...}}`` plus, for a routed pipeline, ``"experts"``: per
    expert the number and share of images routed to it and the per-expert metrics computed on them
    (experts with fewer than two images get none), and, when ``attributes`` give each prompt a
    ``category``, ``generation["experts_by_category"]`` (:func:`experts_by_category`). When a metric
    gives per-image scores, ``"per_image"``: ``{"scores": {key: [...]}}`` in prompt order (and, for a
    routed pipeline, ``"experts"``: the expert of each image). ``real_images``: a uint8 tensor or an image source
    (:mod:`prunekit.eval_images`); generated and real images are resized to ``config.resize``
    (default: the real images' size) before any metric.

    ``folder``: images are written to ``folder/<role>/`` as they are generated and a killed evaluation
    resumes without regenerating them; metrics then read them back in chunks. ``collective``: every
    rank calls this; generation is split over the ranks, the metrics run on rank 0 (the other ranks
    return empty metrics).
    """
    from dataclasses import replace

    from prunekit import distributed
    from prunekit.eval_images import FolderImages, TensorImages, generate_to_folder

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
    images: FolderImages | TensorImages
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
    values, per_expert, scores = _score(metrics, prompts, images, real, attributes, extra_all, experts, n_experts,
                                        config, lambda e: {"role": "expert", "expert": e,
                                                           "pipeline": expert_pipeline(pipe, e)})
    result: dict[str, Any] = {
        "metrics": values,
        "generation": {"images": len(prompts), "height": size, "width": size,
                       "metric_size": (config.resize or size) if prompts else None,
                       "seconds": round(seconds, 3), "seconds_per_image": round(per_image_seconds, 4)},
    }
    if scores:
        result["per_image"] = {"scores": scores, **({"experts": list(experts)} if routed and experts is not None else {})}
    if routed:
        by_category = experts_by_category(attributes, experts, n_experts)
        if by_category is not None:
            result["generation"]["experts_by_category"] = by_category
        complexity = complexity_by_expert(attributes, experts, getattr(pipeline, "manifest", None))
        if complexity is not None:
            # the paper's claim (harder prompts, bigger experts) measured on the eval prompts
            result["generation"]["complexity"] = complexity
            result["metrics"]["complexity_spearman"] = complexity["spearman"]
        result["experts"] = []
        for expert in range(n_experts):
            count = sum(1 for e in experts or [] if e == expert)
            result["experts"].append({"expert": expert, "images": count, "share": count / max(1, len(prompts)),
                                      "metrics": per_expert.get(expert, {})})
    return result
