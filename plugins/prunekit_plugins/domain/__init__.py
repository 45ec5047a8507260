"""The embedded domain: a synthetic captioned-image domain, its classifier and its shipped teacher.

Registers the dataset ``embedded_domain``, the models ``embedded`` (the shipped teacher),
``embedded_random`` (the teacher's architecture, randomly initialised), ``embedded_dit`` (the
transformer teacher, an SD3-shaped pipeline) and ``embedded_dit_random`` (its architecture with a random
transformer and the U-Net teacher's trained VAE and text encoder), the method
``train_domain_classifier`` and the metrics ``domain_alignment`` and ``domain_fid``. See docs/domain.md.
"""

from __future__ import annotations

from prunekit.hookspecs import hookimpl
from prunekit_plugins.domain.dataset import EmbeddedDomainConfig, build_embedded_domain
from prunekit_plugins.domain.metrics import (
    DomainFIDConfig,
    DomainMetricConfig,
    build_domain_alignment,
    build_domain_fid,
)
from prunekit_plugins.domain.prompts import attributes_for_prompt, complexity_of
from prunekit_plugins.domain.teacher import (
    EmbeddedConfig,
    EmbeddedRandomConfig,
    build_embedded,
    build_embedded_random,
)
from prunekit_plugins.domain.teacher_dit import (
    EmbeddedDiTConfig,
    EmbeddedDiTRandomConfig,
    build_embedded_dit,
    build_embedded_dit_random,
)
from prunekit_plugins.domain.train_classifier import TrainClassifierConfig, TrainDomainClassifier

__all__ = ["attributes_for_prompt", "complexity_of"]


@hookimpl
def prunekit_register_components(register) -> None:
    register("dataset", "embedded_domain", build_embedded_domain, schema=EmbeddedDomainConfig,
             doc="Synthetic captioned scenes (objects, related pairs, digits, numbers) drawn by code, deterministic by seed")
    register("model", "embedded", build_embedded, schema=EmbeddedConfig,
             doc="The shipped teacher trained on the embedded domain (tiny SD-shaped pipeline, offline)")
    register("model", "embedded_random", build_embedded_random, schema=EmbeddedRandomConfig,
             doc="The embedded teacher's architecture, randomly initialised, with the domain tokenizer")
    register("model", "embedded_dit", build_embedded_dit, schema=EmbeddedDiTConfig,
             doc="The transformer teacher of the embedded domain (tiny SD3-shaped pipeline, flow matching, offline)")
    register("model", "embedded_dit_random", build_embedded_dit_random, schema=EmbeddedDiTRandomConfig,
             doc="The DiT teacher's architecture: random SD3 transformer, the U-Net teacher's VAE and text encoder")
    register("method", "train_domain_classifier", TrainDomainClassifier, schema=TrainClassifierConfig,
             doc="Train the embedded domain's slot classifier (alignment judge and FID features)")
    register("metric", "domain_alignment", build_domain_alignment, schema=DomainMetricConfig,
             doc="Share of generated images the domain classifier reads as their prompt (per category too)")
    register("metric", "domain_fid", build_domain_fid, schema=DomainFIDConfig,
             doc="FID in the domain classifier's feature space (reference drawings from the prompts if none given)")
