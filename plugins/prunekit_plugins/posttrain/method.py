"""The post-training method: prune the denoiser and each text encoder separately, save the pipeline.

Components, by their pipeline attribute: the denoiser (``unet``, or ``transformer`` for PixArt, SD3
and Flux) and every text encoder the pipeline has (``text_encoder``, ``text_encoder_2``,
``text_encoder_3``). Stages (each skipped by ``--resume`` once completed):

``prune_unet`` / ``prune_transformer``
                        calibrate (through the still-dense text encoders, in the pipeline's own
                        denoising loop) and prune the denoiser; pruned weights go to
                        ``artifacts/pruned/<component>.safetensors``
``prune_text_encoder``, ``prune_text_encoder_2``, ...
                        calibrate and prune each text encoder alone to its section's sparsity
``save_pipeline``       the whole pipeline in diffusers format under ``artifacts/pipeline``
                        (zeros stored densely: plain ``from_pretrained`` loads it)

The denoiser goes first so that its calibration never sees a pruned text encoder: each component's
result depends only on its own section, as in the paper, which prunes them independently and
then combines the best sparsities (the text encoders tokenize the prompt each on its own, so one
encoder's pruning never reaches another's inputs). A component with sparsity 0 is left untouched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from functools import partial
from typing import TYPE_CHECKING, Any, cast

from prunekit.calibration import Feed, PipelineFeed, PromptEncodingFeed, TextEncoderFeed
from prunekit.errors import PrunekitError
from prunekit_plugins.posttrain.config import (
    TEXT_ENCODERS,
    DenoiserSparsity,
    HasCalibration,
    PosttrainConfig,
    TextEncoderSparsity,
)
from prunekit_plugins.posttrain.engine import ComponentResult, PruningRule, prune_component
from prunekit_plugins.posttrain.layers import PrunableLayer, select_layers

if TYPE_CHECKING:
    from prunekit.run import Run

#: an SD 1.x / 2.x pipeline's components in pruning order (any pipeline's: :func:`pipeline_components`)
COMPONENTS: tuple[str, ...] = ("unet", "text_encoder")


def denoiser_component(pipe: Any) -> str:
    """The denoiser's attribute on ``pipe``: ``unet`` or ``transformer``."""
    return "unet" if getattr(pipe, "unet", None) is not None else "transformer"


def pipeline_components(pipe: Any) -> list[str]:
    """What a post-training method prunes, in order: the denoiser, then every text encoder ``pipe`` has."""
    return [denoiser_component(pipe), *(name for name in TEXT_ENCODERS if getattr(pipe, name, None) is not None)]


def component_section(config: PosttrainConfig, component: str) -> TextEncoderSparsity | DenoiserSparsity:
    """The recipe section that prunes ``component`` (a text encoder's, or the denoiser's)."""
    if component in TEXT_ENCODERS:
        return config.text_encoder_section(component)
    return config.denoiser_section


def _attribute(pipe: Any, component: str) -> str:
    """``component`` as the pipeline names it (``denoiser`` and ``unet`` also name a transformer)."""
    if component in ("denoiser", "unet", "transformer"):
        return denoiser_component(pipe)
    return component


def component_feed(pipe: Any, component: str, prompts: list[str], config: HasCalibration) -> Feed:
    """Calibration data for ``component`` of ``pipe``, run the way generation runs it."""
    from prunekit.conditioning import family_of_pipeline

    cal = config.calibration
    component = _attribute(pipe, component)
    if component in TEXT_ENCODERS:
        if component == "text_encoder" and family_of_pipeline(pipe) == "sd":
            return TextEncoderFeed(pipe, prompts, batch_size=cal.batch_size, with_empty=cal.guidance_scale > 1)
        return PromptEncodingFeed(pipe, prompts, batch_size=cal.batch_size, guidance_scale=cal.guidance_scale)
    return PipelineFeed(
        pipe,
        prompts,
        steps=cal.steps,
        guidance_scale=cal.guidance_scale,
        seed=cal.seed,
        batch_size=cal.batch_size,
        height=cal.height,
        width=cal.width,
    )


def layer_report(layers: list[PrunableLayer]) -> dict[str, Any]:
    """Realised sparsity measured on the weights: per layer and over the pruned layers."""
    zeros = sum(int((layer.weight == 0).sum()) for layer in layers)
    numel = sum(layer.numel for layer in layers)
    return {
        "sparsity": zeros / numel if numel else 0.0,
        "zeros": zeros,
        "prunable_params": numel,
        "layers": {layer.name: round(layer.sparsity(), 6) for layer in layers},
    }


def prune_pipeline_component(
    pipe: Any,
    component: str,
    spec: TextEncoderSparsity | DenoiserSparsity,
    rule: PruningRule,
    *,
    prompts: list[str] | None = None,
    config: PosttrainConfig | HasCalibration,
    on_pass: Callable[[str], None] | None = None,
) -> ComponentResult:
    """Prune ``pipe.<component>`` in place as ``spec`` (its sparsity section) asks (``denoiser``: the
    U-Net or transformer)."""
    component = _attribute(pipe, component)
    layers = select_layers(getattr(pipe, component), spec.exclude)
    feed = None
    if rule.statistic is not None:
        if not prompts:
            raise PrunekitError(f"{type(rule).__name__} needs calibration prompts (a dataset section)")
        # cast: a rule with a statistic belongs to a calibrated method, whose options have a calibration section.
        feed = component_feed(pipe, component, prompts, cast(HasCalibration, config))
    return prune_component(
        layers,
        rule,
        sparsity=spec.sparsity,
        pattern=spec.pattern,
        feed=feed,
        sequential=bool(getattr(config, "sequential", False)),
        on_pass=on_pass,
    )


class PosttrainMethod:
    """One post-training method (its rule) applied to both components of a pipeline."""

    def __init__(self, name: str, config: PosttrainConfig, rule_factory: Callable[[], PruningRule]) -> None:
        self.name = name
        self.config = config
        self.rule_factory = rule_factory

    def _prompts(self, run: Run, rule: PruningRule) -> list[str] | None:
        if rule.statistic is None:
            return None
        # cast: a rule with a statistic belongs to a calibrated method, whose options have a calibration section.
        wanted = cast(HasCalibration, self.config).calibration.prompts
        dataset = run.build("dataset")
        # Empty captions are no calibration input: skipped, counted with what the dataset rejected.
        prompts: list[str] = []
        empty = 0
        for prompt in dataset.prompts:
            if len(prompts) >= wanted:
                break
            if isinstance(prompt, str) and prompt.strip():
                prompts.append(prompt)
            else:
                empty += 1
        skipped = {**(getattr(dataset, "rejected", None) or {})}
        if empty:
            skipped["empty_caption"] = skipped.get("empty_caption", 0) + empty
        if skipped:
            run.log.warning("calibration: skipped %s; first: %s", ", ".join(f"{k} {v}" for k, v in sorted(skipped.items())),
                            "; ".join(list(getattr(dataset, "rejected_examples", []))[:3]) or "an empty caption")
            run.save_metrics(data={"calibration_prompts": len(prompts), "skipped": skipped})
        if len(prompts) < wanted:
            run.log.warning("calibration asks for %d prompts; the dataset has %d", wanted, len(prompts))
        if not prompts:
            raise PrunekitError("the dataset holds no prompts to calibrate with")
        return prompts

    def _prune_stage(self, run: Run, pipe: Any, component: str) -> dict[str, Any]:
        from safetensors.torch import save_file

        spec = component_section(self.config, component)
        rule = self.rule_factory()
        if spec.sparsity == 0:
            run.log.info("%s: sparsity 0, left untouched", component)
            return {"skipped": True}
        prompts = self._prompts(run, rule)
        if rule.statistic is None:
            result = prune_pipeline_component(pipe, component, spec, rule, config=self.config)
        else:
            with run.progress(f"{self.name} {component}: calibration passes", total=None) as advance:
                result = prune_pipeline_component(
                    pipe, component, spec, rule, prompts=prompts, config=self.config,
                    on_pass=lambda label: advance(1, block=label),
                )
        layers = select_layers(getattr(pipe, component), spec.exclude)
        path = run.artifact("pruned", f"{component}.safetensors")
        # Every rank calibrates and prunes the same way (the weights agree); rank 0 writes them.
        run.on_main(lambda: save_file({layer.name: layer.weight.detach().contiguous().cpu() for layer in layers},
                                      str(path)))
        report = layer_report(layers)
        run.log.info(
            "%s: %d layers pruned to %.4f in %.1f s (%d calibration passes)",
            component, len(layers), report["sparsity"], result.seconds, result.passes,
        )
        out: dict[str, Any] = {
            "sparsity": report["sparsity"],
            "passes": result.passes,
            "seconds": round(result.seconds, 3),
            "weights": str(path.relative_to(run.dir)),
        }
        if result.units:
            out["blocks"] = result.units  # sequential calibration order
        if result.skipped:
            out["left_dense"] = result.skipped
        if len({t.sparsity for t in result.targets.values()}) > 1:
            out["targets"] = {name: round(t.sparsity, 6) for name, t in result.targets.items()}
        outlier_ratios = getattr(rule, "outlier_ratios", None)  # OWL's per-layer ratios
        if outlier_ratios:
            out["outlier_ratios"] = {name: round(r, 6) for name, r in outlier_ratios.items()}
        return out

    def _restore(self, run: Run, pipe: Any, component: str, result: dict[str, Any]) -> None:
        """Load a completed stage's pruned weights back (``--resume``)."""
        import torch
        from safetensors.torch import load_file

        if result.get("skipped"):
            return
        weights = load_file(str(run.dir / result["weights"]))
        modules = dict(getattr(pipe, component).named_modules())
        with torch.no_grad():
            for name, tensor in weights.items():
                modules[name].weight.copy_(tensor)
        run.log.info("%s: pruned weights restored from %s", component, result["weights"])

    def _components(self, pipe: Any) -> list[str]:
        components = pipeline_components(pipe)
        missing = [name for name in TEXT_ENCODERS[1:]
                   if getattr(self.config, name, None) is not None and name not in components]
        if missing:
            raise PrunekitError(f"method.{missing[0]}: the {type(pipe).__name__} has no {missing[0]} to prune "
                                f"(its text encoders: {', '.join(components[1:]) or 'none'}); remove the section")
        return components

    def run(self, run: Run) -> dict[str, Any]:
        pipe = run.build("model")
        components = self._components(pipe)
        results: dict[str, dict[str, Any]] = {}
        for component in components:
            stage = f"prune_{component}"
            done = stage in run.completed_stages
            results[component] = run.stage(stage, partial(self._prune_stage, run, pipe, component))
            if done:
                self._restore(run, pipe, component, results[component])

        def save() -> dict[str, Any]:
            start = time.perf_counter()
            folder = run.artifact("pipeline")
            run.on_main(lambda: pipe.save_pretrained(str(folder), safe_serialization=True))
            return {"path": str(folder.relative_to(run.dir)), "seconds": round(time.perf_counter() - start, 3)}

        saved = run.stage("save_pipeline", save)
        metrics = self.metrics(pipe, results, saved, components)
        from prunekit.deployable import Deployable

        # The runner evaluates the pruned pipeline as it is in memory (the saved folder holds the same weights).
        metrics["deployable"] = Deployable("pipeline", saved["path"], pipeline=pipe,
                                           entry={"path": saved["path"], "sparsity": metrics["sparsity"]})
        return metrics

    def metrics(self, pipe: Any, results: dict[str, dict[str, Any]], saved: dict[str, Any],
                components: list[str] | None = None) -> dict[str, Any]:
        components = pipeline_components(pipe) if components is None else components
        metrics: dict[str, Any] = {"method": self.name, "pipeline": saved["path"], "components": components}
        zeros = numel = 0
        for component in components:
            spec = component_section(self.config, component)
            module = getattr(pipe, component)
            layers = select_layers(module, spec.exclude)
            report = layer_report(layers)
            total_params = sum(p.numel() for p in module.parameters())
            entry = {
                "requested": spec.sparsity,
                "pattern": spec.pattern,
                "sparsity": report["sparsity"],
                "sparsity_all_params": report["zeros"] / total_params,
                "prunable_params": report["prunable_params"],
                "params": total_params,
                **{k: v for k, v in results[component].items() if k not in ("sparsity", "weights")},
                "layers": report["layers"],
            }
            metrics[component] = entry
            zeros += report["zeros"]
            numel += report["prunable_params"]
        metrics["sparsity"] = zeros / numel if numel else 0.0
        return metrics
