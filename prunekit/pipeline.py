"""``PromptRoutedPipeline``: what a user deploys after APTP.

Each prompt is routed (prompt encoder → router) to one expert U-Net; prompts are grouped by expert
and every group runs batched through a standard diffusers pipeline that shares the base model's
VAE, text encoder, tokenizer and scheduler. Results come back in input order, with the expert that
produced each.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch


@dataclass
class RoutedOutput:
    images: list[Any]
    experts: list[int]


class PromptRoutedPipeline:
    def __init__(self, base: Any, prompt_encoder: Any, router: Any, experts: list[torch.nn.Module],
                 manifest: dict[str, Any] | None = None) -> None:
        self.base = base
        self.prompt_encoder = prompt_encoder
        self.router = router
        self.experts = experts
        self.manifest = manifest or {}
        import inspect

        components = {k: v for k, v in base.components.items() if k != "unet"}
        if "requires_safety_checker" in inspect.signature(type(base).__init__).parameters:
            components["requires_safety_checker"] = bool(getattr(base.config, "requires_safety_checker", False))
        # One pipeline object per expert; all share the same component objects (no copies).
        self._pipes = [type(base)(**components, unet=expert) for expert in experts]
        for pipe in self._pipes:
            pipe.set_progress_bar_config(disable=True)

    @classmethod
    def from_pretrained(cls, mixture_dir: str | Path, *, device: str = "cpu", dtype: torch.dtype | None = None,
                        registry: Any = None, base: Any = None) -> PromptRoutedPipeline:
        """Load a mixture folder written by an APTP run (see :mod:`prunekit.mixture`).

        The base pipeline (VAE, text encoder, scheduler) and the prompt encoder are rebuilt from
        the recipe sections stored in the manifest through the registry, unless ``base`` is given.
        """
        from prunekit.mixture import expert_dir, load_router_state, read_manifest
        from prunekit.registry import get_registry
        from prunekit.unet import load_expert

        mixture_dir = Path(mixture_dir)
        manifest = read_manifest(mixture_dir)
        registry = registry or get_registry()
        if base is None:
            base = registry.build("model", manifest["model"])
        encoder = registry.build("prompt_encoder", manifest["prompt_encoder"])
        router = registry.build("router", manifest["router"], **manifest["router_dims"])
        router.load_state_dict(load_router_state(mixture_dir))
        router.eval()
        if dtype is None:  # experts compute in the base's dtype, whatever dtype they were saved in
            dtype = base.unet.dtype
        experts = []
        for i, entry in enumerate(manifest["experts"]):
            folder = mixture_dir / entry.get("path", expert_dir(mixture_dir, i).relative_to(mixture_dir))
            experts.append(load_expert(folder, device=device, dtype=dtype))
        base = base.to(device)
        if dtype is not None:
            base = base.to(dtype=dtype)
        return cls(base, encoder, router, experts, manifest)

    def route(self, prompts: list[str]) -> list[int]:
        return self.router.route(self.prompt_encoder.encode(list(prompts))).tolist()

    @torch.no_grad()
    def __call__(self, prompt: str | list[str], *, seed: int | list[int] | None = 0, **kwargs: Any) -> RoutedOutput:
        """Generate one image per prompt. ``seed`` (an int: ``seed + index``; or one per prompt) makes
        each image independent of how the batch was grouped. Other keyword arguments go to the
        diffusers pipeline (``num_inference_steps``, ``guidance_scale``, ``height``, ``output_type``...)."""
        prompts = [prompt] if isinstance(prompt, str) else list(prompt)
        if not prompts:
            return RoutedOutput([], [])
        if isinstance(seed, int):
            seeds: list[int] | None = [seed + i for i in range(len(prompts))]
        else:
            seeds = None if seed is None else list(seed)
            if seeds is not None and len(seeds) != len(prompts):
                raise ValueError(f"got {len(seeds)} seeds for {len(prompts)} prompts")
        experts = self.route(prompts)
        images: list[Any] = [None] * len(prompts)
        for expert in sorted(set(experts)):
            idx = [i for i, e in enumerate(experts) if e == expert]
            generators = None
            if seeds is not None:
                generators = [torch.Generator(device="cpu").manual_seed(seeds[i]) for i in idx]
            out = self._pipes[expert]([prompts[i] for i in idx], generator=generators, **kwargs)
            for i, image in zip(idx, out.images):
                images[i] = image
        return RoutedOutput(images, experts)

    def to(self, device: str | torch.device) -> PromptRoutedPipeline:
        self.base.to(device)
        for expert in self.experts:
            expert.to(device)
        return self
