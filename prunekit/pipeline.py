"""``PromptRoutedPipeline``: what a user deploys after APTP, as a diffusers pipeline.

Each prompt is routed (prompt encoder → router) to one expert denoiser; prompts are grouped by expert
and every group runs batched through the base pipeline class (``base_pipeline``:
``StableDiffusionPipeline``, ``StableDiffusionXLPipeline``, ``StableDiffusion3Pipeline``,
``PixArtSigmaPipeline``, ``FluxPipeline``) built on the shared VAE, text encoders, tokenizers and
scheduler, the expert as its ``unet`` or ``transformer``. Results come back in input order, with the
expert that produced each image. What differs per family in a call (PixArt's caption and binning
options, Flux's packed initial noise) comes from :class:`~prunekit.conditioning.Conditioning`.

It is a ``DiffusionPipeline``: ``save_pretrained`` / ``from_pretrained`` (a self-contained folder:
``model_index.json``, shared components written once, ``router/``, ``experts/expert_NN/``),
``.to(device, dtype)``, ``components``, ``set_progress_bar_config``, and a ``scheduler`` that every
expert uses (assign a new one and the next call samples with it).

Batch arguments are split the way a single diffusers pipeline would consume them, so an image equals
what its expert's own pipeline gives for it:

- ``generator``: a list (one per image) is split per image; a single generator first draws the initial
  noise of the whole batch in input order, as one pipeline call would, and each group gets its rows as
  ``latents`` (stochastic samplers then draw their step noise from it group after group).
- ``latents`` (one row per image), ``negative_prompt`` (a list: one per prompt), ``prompt_embeds`` /
  ``negative_prompt_embeds`` (one row per prompt) are split by group; everything else (callbacks,
  ``cross_attention_kwargs``, ``guidance_rescale``...) goes to every group's call.
"""

from __future__ import annotations

import inspect
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from diffusers.pipelines.pipeline_utils import DiffusionPipeline
from diffusers.utils import BaseOutput

from prunekit.conditioning import Conditioning, call_kwargs, denoiser_of, family_of_denoiser
from prunekit.mixture_models import ExpertUNets, PromptRouter

# Text encoders and tokenizers beyond SD's one: SDXL's second (CLIP-G), SD3's second and third (T5),
# Flux's second (T5).
EXTRA_TEXT_COMPONENTS = ("text_encoder_2", "tokenizer_2", "text_encoder_3", "tokenizer_3")


def shared_parts(base: Any) -> dict[str, Any]:
    """The constructor arguments of a :class:`PromptRoutedPipeline` that ``base`` (a diffusers
    text-to-image pipeline) provides: every component but its denoiser, and its class name."""
    components = base.components
    parts = {name: components.get(name) for name in ("vae", "text_encoder", "tokenizer", "scheduler",
                                                     "safety_checker", "feature_extractor", *EXTRA_TEXT_COMPONENTS)}
    return {**parts, "base_pipeline": type(base).__name__,
            "requires_safety_checker": bool(getattr(base.config, "requires_safety_checker", False))}


@dataclass
class PromptRoutedPipelineOutput(BaseOutput):
    """``images`` in input order (``num_images_per_prompt`` consecutive images per prompt), ``experts``:
    the expert of each image; ``nsfw_content_detected`` as the base pipeline reports it (or None)."""

    images: Any
    experts: list[int]
    nsfw_content_detected: list[bool] | None = None


class PromptRoutedPipeline(DiffusionPipeline):
    model_cpu_offload_seq = "text_encoder->experts->vae"  # type: ignore[assignment]  # diffusers declares None
    # The second and third text encoders are SDXL's / SD3's; SD 1.x / 2.x mixtures leave them None.
    _optional_components = ["safety_checker", "feature_extractor", *EXTRA_TEXT_COMPONENTS]
    # set by register_modules
    vae: Any
    text_encoder: Any
    tokenizer: Any
    text_encoder_2: Any
    tokenizer_2: Any
    text_encoder_3: Any
    tokenizer_3: Any
    scheduler: Any
    router: PromptRouter
    experts: ExpertUNets
    safety_checker: Any
    feature_extractor: Any

    def __init__(self, vae: Any, text_encoder: Any, tokenizer: Any, scheduler: Any, router: PromptRouter,
                 experts: ExpertUNets, safety_checker: Any = None, feature_extractor: Any = None,
                 base_pipeline: str = "StableDiffusionPipeline", requires_safety_checker: bool = False,
                 text_encoder_2: Any = None, tokenizer_2: Any = None, text_encoder_3: Any = None,
                 tokenizer_3: Any = None) -> None:
        super().__init__()
        self.register_modules(vae=vae, text_encoder=text_encoder, tokenizer=tokenizer, scheduler=scheduler,
                              router=router, experts=experts, safety_checker=safety_checker,
                              feature_extractor=feature_extractor, text_encoder_2=text_encoder_2,
                              tokenizer_2=tokenizer_2, text_encoder_3=text_encoder_3, tokenizer_3=tokenizer_3)
        self.register_to_config(base_pipeline=base_pipeline, requires_safety_checker=requires_safety_checker)
        self.vae_scale_factor = 2 ** (len(vae.config.block_out_channels) - 1) if vae is not None else 8
        self._offload_device: torch.device | None = None
        # Not part of the mixture: the dense pipeline an evaluation compares against, when one is loaded.
        self.teacher: Any = None
        self.manifest: dict[str, Any] = {}

    # ------------------------------------------------------------------ building
    @classmethod
    def from_parts(cls, base: Any, prompt_encoder: Any, router: Any, experts: Sequence[torch.nn.Module],
                   manifest: dict[str, Any] | None = None, **sections: Any) -> PromptRoutedPipeline:
        """A mixture around objects in memory: ``base`` a diffusers text-to-image pipeline (its denoiser
        is not used), ``router`` a module with ``route(z)``, ``experts`` pruned denoisers. ``sections``
        (``router_section``, ``router_dims``, ``prompt_encoder_section``) make it saveable."""
        pipe = cls(**shared_parts(base), router=PromptRouter.wrap(router, prompt_encoder, **sections),
                   experts=ExpertUNets.wrap(list(experts), (manifest or {}).get("experts")))
        pipe.manifest = dict(manifest or {})
        pipe.teacher = base
        return pipe

    @classmethod
    def from_pretrained(  # type: ignore[override]  # adds device= / dtype= placement
            cls, pretrained_model_name_or_path: str | Path, *args: Any, device: str | None = None,
            dtype: torch.dtype | None = None, **kwargs: Any) -> PromptRoutedPipeline:
        """Load a mixture folder. ``device`` / ``dtype`` place the whole pipeline afterwards; other
        arguments are diffusers' (``torch_dtype``, components passed in to reuse them...)."""
        from prunekit.mixture import read_manifest

        folder = Path(pretrained_model_name_or_path)
        if folder.is_dir() and not (folder / "model_index.json").is_file():
            from prunekit.mixture import load_first_format

            pipe = load_first_format(cls, folder, device=device or "cpu", dtype=dtype, **kwargs)
        else:
            kwargs.pop("registry", None)
            base = kwargs.pop("base", None)
            if base is not None:  # reuse an already loaded model's shared parts
                for name in ("vae", "text_encoder", "tokenizer", *EXTRA_TEXT_COMPONENTS):
                    if getattr(base, name, None) is not None:
                        kwargs.setdefault(name, getattr(base, name))
            pipe = super().from_pretrained(folder, *args, **kwargs)
            pipe.manifest = read_manifest(folder) if (folder / "manifest.json").is_file() else {}
            if dtype is None and base is not None:
                dtype = denoiser_of(base).dtype
            if device is not None or dtype is not None:
                pipe.to(device=device, dtype=dtype)
        pipe.set_progress_bar_config(disable=True)
        return pipe

    # ------------------------------------------------------------------ properties
    @property
    def prompt_encoder(self) -> Any:
        return self.router.encoder

    @property
    def _execution_device(self) -> torch.device:
        if self._offload_device is not None:
            return self._offload_device
        return super()._execution_device

    def enable_model_cpu_offload(self, gpu_id: int | None = None, device: str | torch.device = "cuda") -> None:
        """Keep every module on the CPU between calls; during a call the shared parts sit on ``device``
        and only the expert in use joins them (the mixture's memory is mostly its experts).
        Needs no ``accelerate``."""
        device = torch.device(device)
        if gpu_id is not None:
            device = torch.device(device.type, gpu_id)
        self._offload_device = device
        self.to("cpu")

    def compile(self, mode: str = "max-autotune-no-cudagraphs", *, teacher: bool = True, dynamic: bool | None = False,
                fullgraph: bool = False, backend: str = "inductor") -> PromptRoutedPipeline:
        """Compile every expert U-Net with ``torch.compile`` (in place: see :func:`prunekit.unet.compile.compile_unet`)
        and, with ``teacher`` (and a teacher loaded), the dense teacher's U-Net the same way, so that a latency
        comparison between them is fair. Returns the pipeline.

        Each U-Net compiles at its first call, and again for each new batch size or resolution
        (``dynamic=False``). ``mode="reduce-overhead"`` records **CUDA graphs**: they need static shapes (one
        batch size and one resolution per recorded graph) and weights that stay on the device, so it is
        refused after :meth:`enable_model_cpu_offload`, which moves each expert on and off the GPU every call.
        """
        from prunekit.unet.compile import CUDA_GRAPH_MODES, compile_unet

        if mode in CUDA_GRAPH_MODES and self._offload_device is not None:
            raise ValueError(f"mode {mode!r} records CUDA graphs, which need the weights to stay on the GPU; "
                             "model CPU offload moves the experts every call: use mode='max-autotune-no-cudagraphs'")
        unets = list(self.experts)
        if teacher and self.teacher is not None and getattr(self.teacher, "unet", None) is not None:
            unets.append(self.teacher.unet)
        for unet in unets:
            compile_unet(unet, mode=mode, dynamic=dynamic, fullgraph=fullgraph, backend=backend)
        return self

    @property
    def conditioning(self) -> Conditioning:
        """The conditioning family of the experts (what differs in how their pipeline is called)."""
        return Conditioning(family_of_denoiser(self.experts[0]))

    @property
    def default_size(self) -> int:
        """The image size (pixels) a call generates at unless told: the experts' native latent size
        (``sample_size``; Flux has none and takes its pipeline's ``default_sample_size``) times the VAE's
        downscaling, as the base pipeline defaults."""
        sample = self.experts[0].config.get("sample_size")
        if sample is None:
            sample = self.expert_pipeline(0).default_sample_size
        return int(sample) * self.vae_scale_factor

    def route(self, prompts: Sequence[str]) -> list[int]:
        return self.router.route(list(prompts))

    def expert_pipeline(self, index: int) -> Any:
        """The plain diffusers pipeline (``base_pipeline``) of expert ``index``, sharing every module."""
        import diffusers

        pipeline_class = getattr(diffusers, self.config["base_pipeline"])
        accepted = inspect.signature(pipeline_class.__init__).parameters
        parts = {"vae": self.vae, "text_encoder": self.text_encoder, "tokenizer": self.tokenizer,
                 "scheduler": self.scheduler, "unet": self.experts[index], "transformer": self.experts[index],
                 "safety_checker": self.safety_checker, "feature_extractor": self.feature_extractor,
                 "requires_safety_checker": self.config["requires_safety_checker"],
                 **{name: getattr(self, name, None) for name in EXTRA_TEXT_COMPONENTS}}
        if "add_watermarker" in accepted:  # SDXL: the mixture's images are compared with the teacher's
            parts["add_watermarker"] = False
        pipe = pipeline_class(**{k: v for k, v in parts.items() if k in accepted})
        pipe.set_progress_bar_config(**getattr(self, "_progress_bar_config", {}))
        return pipe

    def save_expert_pipeline(self, index: int, folder: str | Path) -> Path:
        """Write expert ``index`` as a complete diffusers pipeline folder: ``DiffusionPipeline.from_pretrained``
        loads it (with prunekit installed: its ``model_index.json`` names
        ``["prunekit", "PrunedUNet2DConditionModel"]`` for the U-Net)."""
        folder = Path(folder)
        if folder.exists() and any(folder.iterdir()):
            raise FileExistsError(f"{folder} exists and is not empty")
        self.expert_pipeline(index).save_pretrained(folder, safe_serialization=True)
        return folder

    # ------------------------------------------------------------------ the call
    @torch.no_grad()
    def __call__(self, prompt: str | list[str] | None = None, *, negative_prompt: str | list[str] | None = None,
                 num_images_per_prompt: int = 1, generator: torch.Generator | list[torch.Generator] | None = None,
                 latents: torch.Tensor | None = None, prompt_embeds: torch.Tensor | None = None,
                 negative_prompt_embeds: torch.Tensor | None = None, output_type: str = "pil",
                 return_dict: bool = True, experts: int | Sequence[int] | None = None,
                 seed: int | Sequence[int] | None = None, height: int | None = None, width: int | None = None,
                 **kwargs: Any) -> PromptRoutedPipelineOutput | tuple[Any, ...]:
        """Generate ``num_images_per_prompt`` images per prompt, each by its prompt's expert.

        ``experts``: skip routing (one index for all prompts, or one per prompt); needed when only
        ``prompt_embeds`` are given. ``seed``: shorthand for one generator per image, seeded
        ``seed + i`` (an int) or with the given seeds (one per image). Other arguments: as the base
        pipeline's ``__call__`` (see the module docstring for how batch arguments are split).
        """
        prompts = None if prompt is None else [prompt] if isinstance(prompt, str) else list(prompt)
        if prompts is None and prompt_embeds is None:
            raise ValueError("pass `prompt` (or `prompt_embeds` with `experts=`)")
        count = len(prompts) if prompts is not None else int(prompt_embeds.shape[0])  # type: ignore[union-attr]
        n = int(num_images_per_prompt)
        if n < 1:
            raise ValueError(f"num_images_per_prompt must be >= 1, got {n}")
        total = count * n
        if count == 0:
            return PromptRoutedPipelineOutput([], []) if return_dict else ([], None, [])
        routes = self._routes(prompts, experts, count)
        negatives = self._per_prompt("negative_prompt", negative_prompt, count)
        if seed is not None:
            if generator is not None:
                raise ValueError("pass either `seed` or `generator`, not both")
            seeds = [seed + i for i in range(total)] if isinstance(seed, int) else list(seed)
            if len(seeds) != total:
                raise ValueError(f"got {len(seeds)} seeds for {total} images")
            generator = [torch.Generator(device="cpu").manual_seed(int(s)) for s in seeds]
        if isinstance(generator, list) and len(generator) != total:
            raise ValueError(f"got {len(generator)} generators for {total} images "
                             f"({count} prompts x {n} images per prompt)")
        height = height or self.default_size
        width = width or self.default_size
        device = self._execution_device
        conditioning = self.conditioning
        if latents is None and isinstance(generator, torch.Generator):
            dtype = self.text_encoder.dtype if self.text_encoder is not None else self.experts.dtype
            latents = conditioning.initial_noise(self.experts[0], total, height, width, self.vae_scale_factor,
                                                 generator=generator, device=device, dtype=dtype)
        if latents is not None and latents.shape[0] != total:
            raise ValueError(f"latents has {latents.shape[0]} rows for {total} images")
        for name, value in (("prompt_embeds", prompt_embeds), ("negative_prompt_embeds", negative_prompt_embeds)):
            if value is not None and value.shape[0] != count:
                raise ValueError(f"{name} has {value.shape[0]} rows for {count} prompts")

        offloading = self._offload_device is not None
        if offloading:
            for module in (self.text_encoder, self.text_encoder_2, self.text_encoder_3, self.vae, self.router,
                           self.safety_checker):
                if isinstance(module, torch.nn.Module):
                    module.to(device)
        outputs: list[Any] = [None] * total
        nsfw: list[Any] = [None] * total
        try:
            for expert in sorted(set(routes)):
                rows = [i for i, e in enumerate(routes) if e == expert]
                images = [i * n + k for i in rows for k in range(n)]
                call: dict[str, Any] = dict(conditioning.call_defaults(self.experts[0]), **kwargs,
                                            num_images_per_prompt=n, output_type=output_type, height=height,
                                            width=width, return_dict=True)
                if prompts is not None:
                    call["prompt"] = [prompts[i] for i in rows]
                if negatives is not None:
                    # a single string applies to every prompt (diffusers wants a list next to a prompt list)
                    call["negative_prompt"] = [negatives if isinstance(negatives, str) else negatives[i] for i in rows]
                if prompt_embeds is not None:
                    call["prompt_embeds"] = prompt_embeds[rows]
                if negative_prompt_embeds is not None:
                    call["negative_prompt_embeds"] = negative_prompt_embeds[rows]
                if isinstance(generator, list):
                    call["generator"] = [generator[j] for j in images]
                elif generator is not None:
                    call["generator"] = generator
                if latents is not None:
                    call["latents"] = latents[images]
                if offloading:
                    self.experts[expert].to(device)
                pipe = self.expert_pipeline(expert)
                call = {**call_kwargs(pipe), **call}  # e.g. the text length the experts were trained with
                try:
                    out = pipe(**call)
                finally:
                    if offloading:
                        self.experts[expert].to("cpu")
                for j, image in zip(images, self._split(out.images)):
                    outputs[j] = image
                flags = getattr(out, "nsfw_content_detected", None)
                for j, flag in zip(images, flags if flags is not None else [None] * len(images)):
                    nsfw[j] = flag
        finally:
            if offloading:
                self.to("cpu")
        gathered = self._gather(outputs, output_type)
        image_experts = [routes[j // n] for j in range(total)]
        flags_out = None if all(f is None for f in nsfw) else nsfw
        if not return_dict:
            return gathered, flags_out, image_experts
        return PromptRoutedPipelineOutput(images=gathered, experts=image_experts, nsfw_content_detected=flags_out)

    def _routes(self, prompts: list[str] | None, experts: int | Sequence[int] | None, count: int) -> list[int]:
        if experts is None:
            if prompts is None:
                raise ValueError("routing needs the prompt text: pass `prompt`, or choose the expert of each "
                                 "prompt with `experts=` when passing `prompt_embeds`")
            routes = self.route(prompts)
        else:
            routes = [int(experts)] * count if isinstance(experts, int) else [int(e) for e in experts]
            if len(routes) != count:
                raise ValueError(f"got {len(routes)} experts for {count} prompts")
        bad = [e for e in routes if not 0 <= e < len(self.experts)]
        if bad:
            raise ValueError(f"expert index {bad[0]} out of range (this mixture has {len(self.experts)} experts)")
        return routes

    @staticmethod
    def _per_prompt(name: str, value: str | list[str] | None, count: int) -> str | list[str] | None:
        if value is None or isinstance(value, str):
            return value
        value = list(value)
        if len(value) != count:
            raise ValueError(f"{name} has {len(value)} entries for {count} prompts")
        return value

    @staticmethod
    def _split(images: Any) -> list[Any]:
        if isinstance(images, (np.ndarray, torch.Tensor)):
            return [images[i] for i in range(images.shape[0])]
        return list(images)

    @staticmethod
    def _gather(images: list[Any], output_type: str) -> Any:
        if output_type == "pil" or not images:
            return images
        if isinstance(images[0], torch.Tensor):
            return torch.stack(images)
        if isinstance(images[0], np.ndarray):
            return np.stack(images)
        return images


PromptRoutedPipeline.__module__ = PromptRoutedPipelineOutput.__module__ = "prunekit"
