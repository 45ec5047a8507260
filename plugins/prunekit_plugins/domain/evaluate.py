"""Judging images against domain prompts with the classifier: alignment and the domain FID."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch

from prunekit_plugins.domain.classifier import ClassifierFeatures, DomainClassifier, predict_rows
from prunekit_plugins.domain.prompts import parse_prompt, spec_from_attributes
from prunekit_plugins.domain.slots import target_row


def prompt_targets(prompts: Sequence[str] | None = None, attributes: Sequence[dict[str, Any]] | None = None) -> tuple[list[list[int]], list[str]]:
    """Target rows and categories, from ground-truth attributes when given, else parsed from prompts."""
    if attributes is not None:
        specs = [spec_from_attributes(a) for a in attributes]
    elif prompts is not None:
        specs = [parse_prompt(p) for p in prompts]
    else:
        raise ValueError("need prompts or attributes")
    return [target_row(s) for s in specs], [s.category for s in specs]


def aligned_mask(classifier: DomainClassifier, images: torch.Tensor, prompts: Sequence[str] | None = None,
                 attributes: Sequence[dict[str, Any]] | None = None) -> tuple[torch.Tensor, list[str]]:
    """BoolTensor (N,): whether the classifier reads image i as what prompt i asks for."""
    targets, categories = prompt_targets(prompts, attributes)
    if len(targets) != len(images):
        raise ValueError(f"{len(images)} images for {len(targets)} prompts")
    predicted = predict_rows(classifier, images)
    target = torch.tensor(targets, dtype=torch.long).reshape(len(targets), -1)
    ok = ((target == -1) | (predicted == target)).all(dim=1)
    return ok, categories


def alignment_scores(classifier: DomainClassifier, images: torch.Tensor, prompts: Sequence[str] | None = None,
                     attributes: Sequence[dict[str, Any]] | None = None) -> dict[str, float]:
    """{"alignment": share aligned, "alignment_<category>": per category present}."""
    ok, categories = aligned_mask(classifier, images, prompts, attributes)
    scores = {"alignment": float(ok.float().mean()) if len(ok) else float("nan")}
    for category in sorted(set(categories)):
        members = torch.tensor([c == category for c in categories])
        scores[f"alignment_{category}"] = float(ok[members].float().mean())
    return scores


def domain_fid(classifier: DomainClassifier, real: torch.Tensor, fake: torch.Tensor, batch_size: int = 256) -> float:
    """Fréchet distance between classifier features of two uint8 image sets (torchmetrics' FID)."""
    from torchmetrics.image.fid import FrechetInceptionDistance

    metric = FrechetInceptionDistance(feature=ClassifierFeatures(classifier), normalize=False, sync_on_compute=False)
    with torch.no_grad():
        for start in range(0, len(real), batch_size):
            metric.update(real[start : start + batch_size], real=True)
        for start in range(0, len(fake), batch_size):
            metric.update(fake[start : start + batch_size], real=False)
        return float(metric.compute())
