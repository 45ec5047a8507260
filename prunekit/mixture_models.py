"""The two components a mixture adds to a diffusers pipeline: the prompt router and the expert U-Nets.

Both are diffusers ``ModelMixin`` classes, so ``DiffusionPipeline.save_pretrained`` /
``from_pretrained`` save and load them like any other component (``model_index.json`` names them
``["prunekit", "PromptRouter"]`` and ``["prunekit", "ExpertUNets"]``).

- :class:`PromptRouter` holds the router's weights and the recipe sections that rebuild it through the
  plugin registry, plus the exact reference of the frozen prompt encoder (its recipe section and a
  SHA-256 of its weights, checked when it is loaded): the sentence-transformer is a shared, public
  model, so it is referenced rather than copied into every mixture.
- :class:`ExpertUNets` holds the experts; on disk each is its own ``PrunedUNet2DConditionModel`` folder
  (``experts/expert_00/``...), loadable alone.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
from diffusers.configuration_utils import ConfigMixin, register_to_config
from diffusers.models.modeling_utils import ModelMixin
from torch import nn


def weights_sha256(module: Any) -> str:
    """SHA-256 over a module's state dict (names, dtypes, shapes, bytes), in name order."""
    digest = hashlib.sha256()
    state = module.state_dict()
    for name in sorted(state):
        tensor = state[name].detach().to("cpu").contiguous()
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        digest.update(tensor.view(torch.uint8).numpy().tobytes() if tensor.numel() else b"")
    return digest.hexdigest()


def _encoder_model(encoder: Any) -> Any:
    return getattr(encoder, "model", encoder)


class PromptRouter(ModelMixin, ConfigMixin):  # type: ignore[misc]  # diffusers' own pairing (config_name)
    """Prompt text → expert index: a frozen prompt encoder, then the trained router.

    ``router`` / ``router_dims`` / ``prompt_encoder`` are recipe sections (``{"name": ..., **params}``);
    the router is rebuilt through the plugin registry and its weights are this model's weights. The
    prompt encoder is built on first use and must have the weights ``prompt_encoder_sha256`` names.
    """

    @register_to_config
    def __init__(self, router: dict[str, Any] | None = None, router_dims: dict[str, int] | None = None,
                 prompt_encoder: dict[str, Any] | None = None, prompt_encoder_sha256: str | None = None) -> None:
        super().__init__()
        # Lets diffusers read this component's device and dtype even around a router without weights.
        self.register_buffer("anchor", torch.zeros(()), persistent=False)
        self._set_encoder(None)
        # `module`, not `router`: diffusers resolves attribute names that are config keys to the config.
        self.module: Any = None
        if router is not None:
            from prunekit.registry import get_registry

            self.module = get_registry().build("router", dict(router), **dict(router_dims or {}))

    @classmethod
    def wrap(cls, router: Any, prompt_encoder: Any, *, router_section: Mapping[str, Any] | None = None,
             router_dims: Mapping[str, int] | None = None,
             prompt_encoder_section: Mapping[str, Any] | None = None) -> PromptRouter:
        """A PromptRouter around objects built in code. It can be saved only when the sections that
        rebuild them are given."""
        fingerprint = None
        if prompt_encoder_section is not None and hasattr(_encoder_model(prompt_encoder), "state_dict"):
            fingerprint = weights_sha256(_encoder_model(prompt_encoder))
        model = cls(prompt_encoder=None if prompt_encoder_section is None else dict(prompt_encoder_section),
                    prompt_encoder_sha256=fingerprint)
        model.register_to_config(router=None if router_section is None else dict(router_section),
                                 router_dims=None if router_dims is None else dict(router_dims))
        model.module = router
        model._set_encoder(prompt_encoder)
        return model

    def _set_encoder(self, encoder: Any) -> None:
        # Not a submodule even when it is an nn.Module: its weights are referenced, not saved here.
        object.__setattr__(self, "_encoder", encoder)

    @property
    def encoder(self) -> Any:
        """The prompt encoder (built from its recipe section on first use, and checked)."""
        if self._encoder is None:
            section = self.config["prompt_encoder"]
            if section is None:
                raise ValueError("this PromptRouter has no prompt encoder (built in code without one)")
            from prunekit.registry import get_registry

            encoder = get_registry().build("prompt_encoder", dict(section))
            expected = self.config["prompt_encoder_sha256"]
            if expected is not None and weights_sha256(_encoder_model(encoder)) != expected:
                raise ValueError(f"the prompt encoder {dict(section)} does not have the weights this router was "
                                 f"trained with (SHA-256 {expected[:12]}...); point prompt_encoder.path at that model")
            self._set_encoder(encoder)
        return self._encoder

    @torch.no_grad()
    def route(self, prompts: Sequence[str]) -> list[int]:
        z = self.encoder.encode(list(prompts))
        if isinstance(self.module, nn.Module):
            param = next(self.module.parameters(), None)
            if param is not None:
                z = z.to(param.device, param.dtype)
        return [int(e) for e in self.module.route(z).tolist()]

    def save_pretrained(self, save_directory: str | os.PathLike, *args: Any, **kwargs: Any) -> None:
        if self.config["router"] is None or self.config["prompt_encoder"] is None:
            raise ValueError("this PromptRouter was built in code without its recipe sections; it cannot be saved")
        super().save_pretrained(save_directory, *args, **kwargs)


class ExpertUNets(ModelMixin, ConfigMixin):  # type: ignore[misc]  # diffusers' own pairing (config_name)
    """The experts of a mixture, in routing order. ``folders``: each expert's subfolder on disk."""

    @register_to_config
    def __init__(self, folders: list[str] | None = None, info: list[dict[str, Any]] | None = None) -> None:
        super().__init__()
        self.experts = nn.ModuleList()

    @classmethod
    def wrap(cls, experts: Sequence[nn.Module], info: Sequence[Mapping[str, Any]] | None = None) -> ExpertUNets:
        model = cls(folders=[f"expert_{i:02d}" for i in range(len(experts))],
                    info=[dict(x) for x in info] if info is not None else None)
        model.experts.extend(experts)
        return model

    def __len__(self) -> int:
        return len(self.experts)

    def __getitem__(self, index: int) -> Any:
        return self.experts[index]

    def __iter__(self) -> Any:
        return iter(self.experts)

    def save_pretrained(self, save_directory: str | os.PathLike, is_main_process: bool = True,  # type: ignore[override]
                        **kwargs: Any) -> None:  # diffusers' other arguments (shards, variants) do not apply
        """``config.json`` plus one diffusers folder per expert (``save_expert``: atomic, strict)."""
        from prunekit.denoisers import save_expert

        if not is_main_process:
            return
        folder = Path(save_directory)
        folder.mkdir(parents=True, exist_ok=True)
        for name, expert in zip(self.config["folders"], self.experts):
            save_expert(expert, None, folder / name, overwrite=True)
        self.save_config(folder)

    @classmethod
    def from_pretrained(cls, pretrained_model_name_or_path: str | os.PathLike,  # type: ignore[override]
                        **kwargs: Any) -> ExpertUNets:  # a local folder of expert folders
        from prunekit.denoisers import load_expert

        folder = Path(pretrained_model_name_or_path)
        if kwargs.get("subfolder"):
            folder = folder / kwargs["subfolder"]
        config_file = folder / cls.config_name
        if not config_file.is_file():
            raise FileNotFoundError(f"{config_file} is missing; not an ExpertUNets folder")
        config = json.loads(config_file.read_text())
        dtype = kwargs.get("torch_dtype") or kwargs.get("dtype")
        experts = [load_expert(folder / name, dtype=dtype) for name in config.get("folders") or []]
        model = cls.wrap(experts, config.get("info"))
        model.register_to_config(folders=list(config.get("folders") or []))
        return model.eval()


# Saved pipelines name a component by (module, class): the stable public name (see prunekit/__init__.py).
PromptRouter.__module__ = ExpertUNets.__module__ = "prunekit"
