"""What a single-architecture model deploys with: a router with one code and a prompt encoder that
encodes nothing.

With these, a norm or uni-arch run exports the same mixture folder as APTP (one expert), so
``PromptRoutedPipeline``, ``prunekit generate`` and evaluation load every pruned method alike.
The single code is also what ``uni_arch`` trains: the APTP stages run unchanged on it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from prunekit.config import option


@dataclass
class SingleCodeRouterConfig:
    init_logit: float = option(3.0, help="initial code logit: sigmoid(3/0.4) ~ 1, i.e. start dense")


def _torch_module_class() -> type:
    import torch

    class SingleCodeRouter(torch.nn.Module):
        """One architecture code for every prompt; the prompt embedding is ignored.

        It offers the APTP router interface (``forward``, ``embed``, ``assign``, ``nearest``, ``route``,
        ``init_codes``, ``codes``, ``num_codes``), so the APTP pruning stages train the code directly.
        """

        num_codes = 1

        def __init__(self, config: SingleCodeRouterConfig, *, embed_dim: int, num_units: int) -> None:
            super().__init__()
            self.config = config
            self.embed_dim = embed_dim
            self.codes = torch.nn.Parameter(torch.full((1, num_units), float(config.init_logit)))

        def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """``(embeddings, codes)`` in fp32, as the APTP router's: every prompt embeds to the code."""
            codes = self.codes.to(torch.float32, copy=True)
            return codes.expand(len(z), -1), codes

        def embed(self, z: torch.Tensor) -> torch.Tensor:
            return self.codes.expand(len(z), -1)

        def assign(self, e: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
            return torch.zeros(len(e), dtype=torch.long, device=e.device)

        def nearest(self, e: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
            return self.assign(e)

        @torch.no_grad()
        def route(self, z: torch.Tensor) -> torch.Tensor:
            return torch.zeros(len(z), dtype=torch.long)

        @torch.no_grad()
        def init_codes(self, e: torch.Tensor, generator: torch.Generator | None = None) -> None:
            """Nothing to spread: the one code keeps its (dense) start."""

        @torch.no_grad()
        def set_mask(self, mask: torch.Tensor) -> None:
            """Make the code's hard architecture ``mask`` (kept units +init_logit, the others -init_logit)."""
            logit = abs(float(self.config.init_logit)) or 1.0
            self.codes.copy_(torch.where(mask.bool(), logit, -logit).to(self.codes)[None])

    return SingleCodeRouter


_ROUTER_CLASS: type | None = None


def build_single_code_router(config: SingleCodeRouterConfig, *, embed_dim: int, num_units: int) -> Any:
    """Router with one architecture code that every prompt uses."""
    global _ROUTER_CLASS
    if _ROUTER_CLASS is None:
        _ROUTER_CLASS = _torch_module_class()
    return _ROUTER_CLASS(config, embed_dim=embed_dim, num_units=num_units)


@dataclass
class ConstantPromptEncoderConfig:
    dim: int = option(1, ge=1, help="width of the (all-zero) embedding")


class ConstantPromptEncoder:
    """Encodes every prompt as the same zero vector: for models that do not route."""

    def __init__(self, config: ConstantPromptEncoderConfig | None = None) -> None:
        self.config = config or ConstantPromptEncoderConfig()
        self.dim = self.config.dim

    def encode(self, prompts: list[str]) -> Any:
        import torch

        return torch.zeros(len(prompts), self.dim)
