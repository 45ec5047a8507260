"""Generation for evaluation: one image per prompt, in prompt order, with the ``eval:`` sampler.

Generation follows the APTP paper (App. E.3, after BK-SDM): PNDM, 25 steps, guidance 7.5, at the
model's native resolution, images resized to the eval dataset's resolution before any metric. Image
``i`` uses seed ``seed + i`` for the teacher and the pruned model alike, so both start from the same
noise. A pipeline is a diffusers text-to-image pipeline or a :class:`~prunekit.pipeline.PromptRoutedPipeline`
(then the expert of each image is returned too).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from prunekit.eval_config import EvalConfig

LOG = logging.getLogger("prunekit")


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


def _scheduler_class(name: str) -> Any:
    import diffusers

    return {
        "pndm": diffusers.PNDMScheduler,
        "ddim": diffusers.DDIMScheduler,
        "dpm_solver": diffusers.DPMSolverMultistepScheduler,
        "euler": diffusers.EulerDiscreteScheduler,
        "ddpm": diffusers.DDPMScheduler,
        "flow_match_euler": diffusers.FlowMatchEulerDiscreteScheduler,
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
    from prunekit.model_objective import FLOW_SAMPLERS
    from prunekit.objectives import is_flow_matching

    kind = type(pipeline).__name__ if not is_routed(pipeline) else pipeline.config["base_pipeline"]
    if is_flow_matching(pipeline.scheduler) and name not in FLOW_SAMPLERS:
        # A DDPM-family sampler built from a flow-matching config runs, and draws noise.
        raise ValueError(f"eval.scheduler={name} is a DDPM-family sampler; this pipeline ({kind}) "
                         "is trained by flow matching: set eval.scheduler=pipeline or flow_match_euler")
    if not is_flow_matching(pipeline.scheduler) and name in FLOW_SAMPLERS:
        raise ValueError(f"eval.scheduler={name} is a flow-matching sampler; this pipeline ({kind}) is a "
                         "DDPM-family model: set eval.scheduler=pipeline or pndm")
    extra = {"skip_prk_steps": True} if name == "pndm" else {}
    scheduler = _scheduler_class(name).from_config(pipeline.scheduler.config, **extra)
    if is_routed(pipeline):
        swapped = type(pipeline)(**{**pipeline.components, "scheduler": scheduler},
                                 base_pipeline=pipeline.config["base_pipeline"],
                                 requires_safety_checker=pipeline.config["requires_safety_checker"])
        swapped.manifest, swapped.teacher = pipeline.manifest, pipeline.teacher
        swapped.set_progress_bar_config(disable=True)
        return swapped
    swapped = same_dtype_pipe(pipeline, scheduler=scheduler)
    swapped.set_progress_bar_config(disable=True)
    return swapped


def same_dtype_pipe(pipeline: Any, **components: Any) -> Any:
    """``from_pipe`` with some components replaced, keeping the pipeline's dtype (diffusers' own
    ``from_pipe`` casts every module to float32 unless told otherwise)."""
    from prunekit.conditioning import denoiser_of
    from prunekit.models import dtype_keyword

    return type(pipeline).from_pipe(pipeline, **components, **{dtype_keyword(): denoiser_of(pipeline).dtype})


def expert_pipeline(routed: Any, index: int) -> Any:
    """The plain diffusers pipeline of one expert of a :class:`PromptRoutedPipeline`."""
    swapped = routed.expert_pipeline(index)
    swapped.set_progress_bar_config(disable=True)
    return swapped


def native_resolution(pipeline: Any) -> int:
    from prunekit.conditioning import denoiser_of

    if is_routed(pipeline):
        return int(pipeline.default_size)
    # Flux's transformer has no sample_size: its pipeline's default_sample_size
    sample = denoiser_of(pipeline).config.get("sample_size") or pipeline.default_sample_size
    return int(sample) * int(getattr(pipeline, "vae_scale_factor", 8))


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
    out = [np.asarray(Image.fromarray(img.permute(1, 2, 0).numpy()).resize((size, size), Image.Resampling.BICUBIC))
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
        experts: list[int] | None = None
        if local.experts is not None:
            experts = []
            for _, part_experts, _ in parts:
                assert part_experts is not None  # every rank runs the same (routed) pipeline
                experts.extend(part_experts)
        return Generation(images, experts, max(p[2] for p in parts), local.height, local.width)
    return _generate(pipeline, prompts, config, log=log)


def _batch_caller(pipeline: Any, config: EvalConfig) -> tuple[Callable[[list[str], list[int]], tuple[list[Any], list[int] | None]], int]:
    """``(call, size)``: ``call(prompts, seeds)`` generates one batch (uint8 HxWx3 arrays, experts or
    None) with ``config``'s sampler at ``size`` pixels."""
    import numpy as np
    import torch

    from prunekit.conditioning import call_kwargs

    pipe = with_scheduler(pipeline, config.scheduler)
    routed = is_routed(pipe)
    size = config.resolution or native_resolution(pipe)
    kwargs = dict(num_inference_steps=config.steps, guidance_scale=config.guidance_scale, height=size, width=size,
                  output_type="np")
    if not routed:  # a mixture sets its family's defaults itself
        from prunekit.conditioning import conditioning_for, denoiser_of

        kwargs = {**conditioning_for(pipe).call_defaults(denoiser_of(pipe)), **kwargs}

    def call(chunk: list[str], seeds: list[int]) -> tuple[list[Any], list[int] | None]:
        if routed:
            out = pipe(chunk, seed=seeds, **kwargs)
            experts: list[int] | None = [int(e) for e in out.experts]
        else:
            generators = [torch.Generator(device="cpu").manual_seed(s) for s in seeds]
            out = pipe(chunk, generator=generators, **kwargs, **call_kwargs(pipe))
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
