"""Metric plugins of the embedded domain: ``domain_alignment`` and ``domain_fid``.

Each factory builds ``metric(batch: prunekit.evaluation.EvalBatch) -> dict[str, float]``. The
classifier is loaded on first use, so building a metric stays cheap.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Generic, TypeVar

from prunekit.config import option

if TYPE_CHECKING:
    from prunekit.evaluation import EvalBatch


@dataclass
class DomainMetricConfig:
    classifier: str | None = option(None, help="classifier folder (default: the shipped one)")
    device: str = option("cpu", help="device the classifier runs on")

    def preflight(self) -> list[str]:
        if self.classifier and not (Path(self.classifier) / "model.safetensors").is_file():
            return [f"classifier folder {self.classifier} has no model.safetensors (set metrics.*.classifier=DIR)"]
        return []


@dataclass
class DomainFIDConfig(DomainMetricConfig):
    reference_seed: int = option(0, ge=0, help="seed of the reference drawings when a batch brings no real images")


_Config = TypeVar("_Config", bound=DomainMetricConfig)


class _WithClassifier(Generic[_Config]):
    def __init__(self, config: _Config) -> None:
        self.config = config
        self._classifier: Any = None

    @property
    def classifier(self) -> Any:
        if self._classifier is None:
            from prunekit_plugins.domain.classifier import load_classifier

            self._classifier = load_classifier(self.config.classifier, device=self.config.device)
        return self._classifier


class DomainAlignment(_WithClassifier[DomainMetricConfig]):
    """Share of images the classifier reads as what their prompt asks for (overall and per category)."""

    def __call__(self, batch: EvalBatch) -> dict[str, float]:
        from prunekit_plugins.domain.evaluate import alignment_scores

        scores = alignment_scores(self.classifier, batch.images, batch.prompts, batch.attributes)
        return {f"domain_{k}": v for k, v in scores.items()}

    def per_image(self, batch: EvalBatch) -> dict[str, list[float | None]]:
        """1/0 per image (aligned or not), overall and per category (None outside the category): the
        report bootstraps its intervals from them."""
        from prunekit_plugins.domain.evaluate import aligned_mask

        ok, categories = aligned_mask(self.classifier, batch.images, batch.prompts, batch.attributes)
        values = [float(v) for v in ok.tolist()]
        out: dict[str, list[float | None]] = {"domain_alignment": list(values)}
        for category in sorted(set(categories)):
            out[f"domain_alignment_{category}"] = [v if c == category else None for v, c in zip(values, categories)]
        return out


class DomainFID(_WithClassifier[DomainFIDConfig]):
    """FID in the domain classifier's feature space; real images are drawn from the prompts when absent."""

    def __call__(self, batch: EvalBatch) -> dict[str, float]:
        from prunekit_plugins.domain.evaluate import domain_fid

        real = batch.real_images
        if real is None:
            real = reference_images(batch.prompts, resolution=int(batch.images.shape[-1]), seed=self.config.reference_seed)
        if len(real) < 2 or len(batch.images) < 2:  # a covariance needs two samples (e.g. a tiny expert's share)
            return {"domain_fid": float("nan")}
        return {"domain_fid": domain_fid(self.classifier, real, batch.images)}


def reference_images(prompts: list[str], resolution: int = 32, seed: int = 0) -> Any:
    """uint8 (N, 3, R, R): one drawing per prompt, laid out by a generator seeded with (seed, i)."""
    import numpy as np
    import torch

    from prunekit_plugins.domain.prompts import parse_prompt
    from prunekit_plugins.domain.scenes import layout, render

    arrays = [render(layout(parse_prompt(p), np.random.default_rng([seed, i]), resolution)) for i, p in enumerate(prompts)]
    return torch.from_numpy(np.stack(arrays)).permute(0, 3, 1, 2).contiguous()


def build_domain_alignment(config: DomainMetricConfig) -> DomainAlignment:
    return DomainAlignment(config)


def build_domain_fid(config: DomainFIDConfig) -> DomainFID:
    return DomainFID(config)
