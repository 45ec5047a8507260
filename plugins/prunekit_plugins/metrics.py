"""Metric plugins: image quality (FID, KID, CLIP score, CMMD) from local weights, and complexity
(MACs, latency). Each builds ``metric(batch: EvalBatch) -> dict`` (see :mod:`prunekit.evaluation`).

Nothing is downloaded: FID/KID need the FID InceptionV3 weights as a local file, CLIP score and CMMD a
local CLIP folder. Without them a run stops at preflight with one line naming the recipe key to set.
One module for all of them (past ~400 lines) because they share the weight-path preflight and the
evaluation-batch conventions, and each is a few dozen lines.
"""

from __future__ import annotations

import abc
import statistics
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunekit.config import option
from prunekit.hookspecs import hookimpl

INCEPTION_HELP = ("local FID InceptionV3 weights: the pt_inception-2015-12-05 state dict "
                  "(.safetensors, or a tensor-only .pth)")
CLIP_HELP = "local CLIP folder (CLIPModel + CLIPProcessor save_pretrained layout)"


def _path_problem(value: str | None, key: str, what: str, *, folder: bool = False) -> str | None:
    """One line naming ``key`` when ``value`` is unset or missing; None when it is usable."""
    kind = "DIR" if folder else "FILE"
    if not value:
        return f"{key} is not set: {what}; set {key}={kind}"
    path = Path(value).expanduser()
    if not (path.is_dir() if folder else path.is_file()):
        return f"{key}: {value} does not exist ({what}); set {key}={kind}"
    return None


def _require(problem: str | None) -> None:
    from prunekit.errors import MissingPathError

    if problem:
        raise MissingPathError(problem)


def _device(name: str) -> str:
    if name != "auto":
        return name
    import torch

    return "cuda" if torch.cuda.is_available() else "cpu"


def _real_images(batch: Any, metric: str) -> Any:
    from prunekit.errors import MissingPathError

    if batch.real_images is None:
        raise MissingPathError(f"metric {metric} compares with real images, but the eval dataset has none; set "
                               f"method.eval.dataset to a captioned image dataset")
    return batch.real_images


def _chunks(images: Any, size: int) -> Any:
    for start in range(0, len(images), size):
        yield images[start:start + size]


# -- FID / KID ------------------------------------------------------------------------------------------

@dataclass
class FIDConfig:
    inception_weights: str | None = option(None, help=INCEPTION_HELP)
    batch_size: int = option(50, ge=1, help="images per feature-extraction call")
    device: str = option("auto", help="auto (cuda when available), cpu, cuda, cuda:1, ...")

    def preflight(self) -> list[str]:
        problem = _path_problem(self.inception_weights, "metrics.fid.inception_weights", "FID needs the FID Inception weights")
        return [problem] if problem else []


@dataclass
class KIDConfig:
    inception_weights: str | None = option(None, help=INCEPTION_HELP)
    subsets: int = option(100, ge=1, help="random subsets averaged (torchmetrics' default)")
    subset_size: int = option(1000, ge=2, help="images per subset (capped at the number of images)")
    batch_size: int = option(50, ge=1)
    device: str = option("auto")

    def preflight(self) -> list[str]:
        problem = _path_problem(self.inception_weights, "metrics.kid.inception_weights", "KID needs the FID Inception weights")
        return [problem] if problem else []


class _InceptionMetric(abc.ABC):
    """Shared by FID and KID: the Inception features come from local weights (or an injected module).
    Each subclass names its torchmetrics metric and how its value becomes the result."""

    key = ""

    def __init__(self, config: Any, *, feature: Any = None) -> None:
        self.config = config
        if feature is None:
            _require(config.preflight()[0] if config.preflight() else None)
        self._feature = feature

    def feature(self) -> Any:
        if self._feature is None:
            from prunekit.metrics import load_fid_inception

            self._feature = load_fid_inception(self.config.inception_weights, key=self.key)
        return self._feature

    @abc.abstractmethod
    def _torchmetric(self) -> Any:
        """A fresh torchmetrics metric fed with this metric's Inception features."""

    def accumulator(self) -> _TorchmetricsAccumulator:
        """Streaming state: Inception features of real and generated images, fed chunk by chunk."""
        return _TorchmetricsAccumulator(self._torchmetric(), self.config, self.key.split(".")[1], self._result)

    @abc.abstractmethod
    def _result(self, value: Any) -> dict[str, float]:
        """The computed torchmetrics metric as this plugin's result keys."""

    def __call__(self, batch: Any) -> dict[str, float]:
        acc = self.accumulator()
        acc.update(batch)
        return acc.compute()


class _TorchmetricsAccumulator:
    """A torchmetrics metric on ``device`` fed real (``real=True``) and generated images per chunk."""

    def __init__(self, metric: Any, config: Any, name: str, result: Any) -> None:
        self.device = _device(config.device)
        self.metric, self.config, self.name, self.result = metric.to(self.device), config, name, result
        self.count = 0

    def update(self, batch: Any) -> None:
        for chunk in _chunks(_real_images(batch, self.name), self.config.batch_size):
            self.metric.update(chunk.to(self.device), real=True)
        for chunk in _chunks(batch.images, self.config.batch_size):
            self.metric.update(chunk.to(self.device), real=False)
        self.count += len(batch.images)

    def compute(self) -> dict[str, float]:
        if self.count < 2:  # a covariance (FID) or a subset (KID) needs two images
            return {k: float("nan") for k in self.result(None)}
        return self.result(self.metric)


class FID(_InceptionMetric):
    """Fréchet Inception Distance (torchmetrics) between real and generated images."""

    key = "metrics.fid.inception_weights"

    def _torchmetric(self) -> Any:
        from torchmetrics.image.fid import FrechetInceptionDistance

        return FrechetInceptionDistance(feature=self.feature(), normalize=False, sync_on_compute=False)

    def _result(self, metric: Any) -> dict[str, float]:
        return {"fid": float("nan") if metric is None else float(metric.compute())}


class KID(_InceptionMetric):
    """Kernel Inception Distance (torchmetrics; mean and std over random subsets)."""

    key = "metrics.kid.inception_weights"

    def _torchmetric(self) -> Any:
        from torchmetrics.image.kid import KernelInceptionDistance

        return KernelInceptionDistance(feature=self.feature(), subsets=self.config.subsets,
                                       subset_size=self.config.subset_size, normalize=False, sync_on_compute=False)

    def _result(self, metric: Any) -> dict[str, float]:
        if metric is None:
            return {"kid": float("nan"), "kid_std": float("nan")}
        # Subsets cannot be larger than the image sets, known only now that they are all seen.
        metric.subset_size = min(self.config.subset_size, sum(len(f) for f in metric.real_features),
                                 sum(len(f) for f in metric.fake_features))
        mean, std = metric.compute()
        return {"kid": float(mean), "kid_std": float(std)}


# -- CLIP score / CMMD -------------------------------------------------------------------------------------

@dataclass
class ClipScoreConfig:
    clip_path: str | None = option(None, help=CLIP_HELP + " (paper: a ViT-L/14-class CLIP)")
    batch_size: int = option(64, ge=1)
    device: str = option("auto")

    def preflight(self) -> list[str]:
        problem = _path_problem(self.clip_path, "metrics.clip_score.clip_path", "CLIP score needs a local CLIP model",
                                folder=True)
        return [problem] if problem else []


class ClipScore:
    """CLIP score (torchmetrics): 100 × cosine(image, prompt) averaged over images; per image too, for
    the report's intervals."""

    def __init__(self, config: ClipScoreConfig) -> None:
        _require(config.preflight()[0] if config.preflight() else None)
        self.config = config

    def _clip(self) -> tuple[Any, Any, str]:
        from prunekit.metrics import load_clip

        device = _device(self.config.device)
        assert self.config.clip_path is not None  # __init__ required it
        model, processor = load_clip(self.config.clip_path, key="metrics.clip_score.clip_path", device=device)
        return model, processor, device

    def accumulator(self) -> _ClipScoreAccumulator:
        from torchmetrics.multimodal.clip_score import CLIPScore

        model, processor, device = self._clip()
        metric = CLIPScore(model_name_or_path=lambda: (model, processor), sync_on_compute=False).to(device)
        return _ClipScoreAccumulator(metric, device, self.config.batch_size)

    def per_image(self, batch: Any) -> dict[str, list[float | None]]:
        """Each image's ``100 × cos(image, prompt)``: their mean is the metric's value (when positive)."""
        from prunekit.metrics import clip_scores

        model, processor, _ = self._clip()
        scores = clip_scores(batch.images, list(batch.prompts), model, processor, batch_size=self.config.batch_size)
        return {"clip_score": [float(v) for v in scores.tolist()]}

    def __call__(self, batch: Any) -> dict[str, float]:
        acc = self.accumulator()
        acc.update(batch)
        return acc.compute()


class _ClipScoreAccumulator:
    def __init__(self, metric: Any, device: str, size: int) -> None:
        self.metric, self.device, self.size, self.count = metric, device, size, 0

    def update(self, batch: Any) -> None:
        for start in range(0, len(batch.images), self.size):
            self.metric.update(batch.images[start:start + self.size].to(self.device), batch.prompts[start:start + self.size])
        self.count += len(batch.images)

    def compute(self) -> dict[str, float]:
        return {"clip_score": float(self.metric.compute()) if self.count else float("nan")}


@dataclass
class CMMDConfig:
    clip_path: str | None = option(None, help=CLIP_HELP + " (CMMD paper: openai/clip-vit-large-patch14-336)")
    sigma: float = option(10.0, gt=0, help="RBF bandwidth (CMMD paper: 10)")
    scale: float = option(1000.0, gt=0, help="the distance is multiplied by this (CMMD paper: 1000)")
    batch_size: int = option(64, ge=1)
    device: str = option("auto")

    def preflight(self) -> list[str]:
        problem = _path_problem(self.clip_path, "metrics.cmmd.clip_path", "CMMD needs a local CLIP model", folder=True)
        return [problem] if problem else []


class CMMD:
    """CMMD (Jayasumana et al. 2024): MMD between CLIP embeddings of real and generated images."""

    def __init__(self, config: CMMDConfig) -> None:
        _require(config.preflight()[0] if config.preflight() else None)
        self.config = config

    def accumulator(self) -> _CMMDAccumulator:
        from prunekit.metrics import load_clip

        assert self.config.clip_path is not None  # __init__ required it
        model, processor = load_clip(self.config.clip_path, key="metrics.cmmd.clip_path", device=_device(self.config.device))
        return _CMMDAccumulator(self.config, model, processor)

    def __call__(self, batch: Any) -> dict[str, float]:
        acc = self.accumulator()
        acc.update(batch)
        return acc.compute()


class _CMMDAccumulator:
    """CLIP embeddings of real and generated images (the state CMMD needs; never the images)."""

    def __init__(self, config: CMMDConfig, model: Any, processor: Any) -> None:
        self.config, self.model, self.processor = config, model, processor
        self.real: list[Any] = []
        self.fake: list[Any] = []

    def update(self, batch: Any) -> None:
        from prunekit.metrics import clip_image_embeddings

        size = self.config.batch_size
        self.real.append(clip_image_embeddings(_real_images(batch, "cmmd"), self.model, self.processor, batch_size=size))
        self.fake.append(clip_image_embeddings(batch.images, self.model, self.processor, batch_size=size))

    def compute(self) -> dict[str, float]:
        import torch

        from prunekit.metrics import cmmd

        if not self.fake:
            return {"cmmd": float("nan")}
        return {"cmmd": cmmd(torch.cat(self.real), torch.cat(self.fake), sigma=self.config.sigma, scale=self.config.scale)}


# -- complexity ---------------------------------------------------------------------------------------------

@dataclass
class MacsConfig:
    resolution: int | None = option(None, ge=8, help="image size in pixels (default: the generation size)")
    text_len: int | None = option(None, ge=1, help="text tokens (default: what the pipeline feeds its denoiser: 77 for "
                                                   "SD, CLIP + T5 tokens for SD3, T5's for PixArt / Flux)")


def _unets(pipeline: Any) -> tuple[Any, list[Any]]:
    """(teacher U-Net or the single model's, expert U-Nets) of what generated the batch."""
    from prunekit.conditioning import denoiser_of
    from prunekit.evaluation import is_routed

    if is_routed(pipeline):
        return denoiser_of(pipeline.teacher), list(pipeline.experts)
    return denoiser_of(pipeline), []


class Macs:
    """MACs of one U-Net forward (batch 1): teacher, each expert, and the mixture's routed mean."""

    per_expert = False
    needs_images = False

    def __init__(self, config: MacsConfig) -> None:
        self.config = config
        self._text_lens: dict[int, int] = {}

    def __call__(self, batch: Any) -> dict[str, float]:
        from prunekit.denoisers import measure_macs

        pipe = batch.extra["pipeline"]
        size = self.config.resolution or int(batch.extra["height"])
        latent = size // int(getattr(pipe, "vae_scale_factor", 8))
        # A mixture was budgeted at the text length it was trained on (SD3: CLIP + T5 tokens), which its
        # manifest records; a single pipeline counts the tokens it feeds its denoiser, the same length.
        text_len = self.config.text_len or (getattr(pipe, "manifest", None) or {}).get("text_len")
        if not text_len:
            from prunekit.conditioning import text_length
            from prunekit.evaluation import is_routed

            if id(pipe) not in self._text_lens:  # once per pipeline, not per batch (it runs the encoders)
                # a mixture without a recorded length: its teacher's, if it has one
                single = getattr(pipe, "teacher", None) if is_routed(pipe) else pipe
                self._text_lens[id(pipe)] = (text_length(single) if single is not None
                                             else int(pipe.tokenizer.model_max_length))
            text_len = self._text_lens[id(pipe)]
        teacher, experts = _unets(pipe)

        def count(unet: Any) -> float:
            return float(measure_macs(unet, height=latent, width=latent, text_len=int(text_len)))

        dense = count(teacher)
        out = {"macs": dense, "macs_ratio": 1.0, "macs_resolution": size}
        if experts:
            per_expert = [count(e) for e in experts]
            routed = batch.extra.get("experts") or []
            mean = sum(per_expert[e] for e in routed) / len(routed) if routed else float("nan")
            out.update(macs=mean, macs_ratio=mean / dense, macs_teacher=dense)
            for i, value in enumerate(per_expert):
                out[f"macs_expert_{i:02d}"] = value
                out[f"macs_ratio_expert_{i:02d}"] = value / dense
        return out


@dataclass
class LatencyConfig:
    steps: int | None = option(None, ge=1, help="sampler steps per timed call (default: method.eval.steps)")
    batch_size: int = option(1, ge=1, help="prompts per timed call; seconds are per sample")
    repeats: int = option(5, ge=1, help="timed rounds; the median is reported")
    warmup: int = option(1, ge=0, help="untimed rounds first (allocator, kernels, caches)")
    resolution: int | None = option(None, ge=8, help="image size (default: the generation size)")


def describe_device(module: Any) -> str:
    import platform

    import torch

    device = next(module.parameters()).device
    if device.type == "cuda":
        return f"{torch.cuda.get_device_name(device)} ({device})"
    return f"cpu {platform.machine()} ({torch.get_num_threads()} threads)"


class Latency:
    """Seconds per sample of the teacher, each expert and the mixture (median of interleaved rounds)."""

    per_expert = False
    needs_images = False

    def __init__(self, config: LatencyConfig) -> None:
        self.config = config

    def __call__(self, batch: Any) -> dict[str, Any]:
        import torch

        from prunekit.conditioning import call_kwargs
        from prunekit.evaluation import expert_pipeline, is_routed

        cfg = self.config
        pipe = batch.extra["pipeline"]
        eval_cfg = batch.extra.get("config")
        steps = cfg.steps or (eval_cfg.steps if eval_cfg is not None else 25)
        size = cfg.resolution or int(batch.extra["height"])
        kwargs = dict(num_inference_steps=steps, height=size, width=size, output_type="np",
                      guidance_scale=eval_cfg.guidance_scale if eval_cfg is not None else 7.5)
        candidates: dict[str, Any] = {}
        if is_routed(pipe):
            candidates["teacher"] = pipe.teacher
            for i in range(len(pipe.experts)):
                candidates[f"expert_{i:02d}"] = expert_pipeline(pipe, i)
            candidates["mixture"] = pipe
        else:
            candidates["model"] = pipe
        prompts = list(batch.prompts) or ["a photograph"]
        cuda = any(p.is_cuda for p in _unets(pipe)[0].parameters())
        times: dict[str, list[float]] = {name: [] for name in candidates}
        for round_ in range(cfg.warmup + cfg.repeats):
            # Each round uses the next prompts, so the mixture's timing averages over its routing.
            chunk = [prompts[(round_ * cfg.batch_size + k) % len(prompts)] for k in range(cfg.batch_size)]
            for name, candidate in candidates.items():
                if cuda:
                    torch.cuda.synchronize()
                start = time.perf_counter()
                candidate(chunk, **kwargs, **call_kwargs(candidate))
                if cuda:
                    torch.cuda.synchronize()
                if round_ >= cfg.warmup:
                    times[name].append((time.perf_counter() - start) / cfg.batch_size)
        out: dict[str, Any] = {f"latency_{name}_s": statistics.median(t) for name, t in times.items()}
        out["latency_s"] = out.pop("latency_mixture_s" if is_routed(pipe) else "latency_model_s")
        out["latency_device"] = describe_device(_unets(pipe)[0])
        out["latency_steps"] = steps
        return out


@hookimpl
def prunekit_register_components(register) -> None:
    register("metric", "fid", FID, schema=FIDConfig,
             doc="FID (torchmetrics) with the FID InceptionV3 from a local weights file")
    register("metric", "kid", KID, schema=KIDConfig,
             doc="KID (torchmetrics) with the FID InceptionV3 from a local weights file")
    register("metric", "clip_score", ClipScore, schema=ClipScoreConfig,
             doc="CLIP score (torchmetrics) with a local CLIP folder")
    register("metric", "cmmd", CMMD, schema=CMMDConfig,
             doc="CMMD: RBF-MMD (sigma 10, x1000) of CLIP image embeddings, real vs generated")
    register("metric", "macs", Macs, schema=MacsConfig,
             doc="MACs per U-Net forward: teacher, each expert, the mixture's routed mean")
    register("metric", "latency", Latency, schema=LatencyConfig,
             doc="Seconds per sample: teacher, each expert, mixture (median of interleaved runs)")
