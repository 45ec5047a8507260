"""The APTP router: architecture predictor + learnable architecture codes (+ optimal transport)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

from prunekit.config import option


@dataclass
class APTPRouterConfig:
    num_codes: int = option(8, ge=1, help="number of architecture codes = experts")
    optimal_transport: bool = option(True, help="Sinkhorn equipartition while training; off = contrastive router")
    ot_eps: float = option(0.05, gt=0, help="entropic regularisation of the transport problem")
    ot_iters: int = option(3, ge=1, help="Sinkhorn-Knopp iterations")
    init_logit: float = option(3.0, help="initial predictor bias: sigmoid(3/0.4) ~ 1, i.e. start dense")
    init_kmeans_iters: int = option(10, ge=0, help="cosine k-means steps placing the codes at the joint phase's start")
    ot_scope: Literal["micro_batch", "global"] = option(
        "micro_batch",
        help="micro_batch: equipartition within each micro-batch, so N ranks train exactly like one rank with "
             "N accumulation steps; global: within the micro-batches of all ranks together (SwAV)")


def _torch_module_class() -> type:
    import torch

    class APTPRouter(torch.nn.Module):
        """e = W z + b (one linear layer, App. D.1); codes A (N × units).

        Training: items are assigned to codes by Sinkhorn on cosine similarity (eq. 5–8, 20–21),
        or by plain nearest code without optimal transport. Inference: nearest code by cosine (eq. 22).
        """

        def __init__(self, config: APTPRouterConfig, *, embed_dim: int, num_units: int) -> None:
            super().__init__()
            self.config = config
            self.num_codes = config.num_codes
            self.predictor = torch.nn.Linear(embed_dim, num_units)
            torch.nn.init.normal_(self.predictor.weight, std=0.01)
            torch.nn.init.constant_(self.predictor.bias, config.init_logit)
            self.codes = torch.nn.Parameter(torch.full((config.num_codes, num_units), config.init_logit))

        def forward(self, z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
            """One training step's read of every parameter: ``(embeddings, codes)``, both fp32.

            Training reads the parameters only through this call, which is where ZeRO-3 gathers
            them; the codes come out as a copy, so they outlive the gathered parameter.
            """
            e = self.predictor(z.to(self.predictor.weight.dtype))
            return e.float(), self.codes.to(torch.float32, copy=True)

        def embed(self, z: torch.Tensor) -> torch.Tensor:
            return self.predictor(z.to(self.predictor.weight.dtype))

        def similarity(self, e: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
            import torch.nn.functional as F

            codes = self.codes if codes is None else codes
            return F.normalize(e, dim=-1) @ F.normalize(codes.to(e.dtype), dim=-1).T

        def assign(self, e: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
            """Training-time code index of each item (Sinkhorn over this micro-batch, see ``ot_scope``)."""
            scores = self.similarity(e.detach(), None if codes is None else codes.detach())
            if not self.config.optimal_transport:
                return scores.argmax(-1)
            from prunekit.ops import sinkhorn

            q = sinkhorn(scores, eps=self.config.ot_eps, n_iters=self.config.ot_iters,
                         distributed=self.config.ot_scope == "global")
            return q.argmax(-1)

        @torch.no_grad()
        def nearest(self, e: torch.Tensor, codes: torch.Tensor | None = None) -> torch.Tensor:
            """The code each architecture embedding is deployed with: highest cosine similarity (eq. 22)."""
            return self.similarity(e, codes).argmax(-1)

        @torch.no_grad()
        def route(self, z: torch.Tensor) -> torch.Tensor:
            """Inference: the nearest code of each prompt embedding."""
            return self.nearest(self.embed(z.to(self.codes)))

        @torch.no_grad()
        def init_codes(self, e: torch.Tensor, generator: torch.Generator | None = None) -> None:
            """Start the codes on the cosine k-means centres of the predicted architectures.

            Seeded farthest-point (so no two start together), then Lloyd steps: farthest points alone
            are outliers, and a code that starts on an outlier is nobody's nearest code at inference.
            """
            import torch.nn.functional as F

            e = e.detach().float()
            unit = F.normalize(e, dim=-1)
            first = int(torch.randint(len(e), (1,), generator=generator))
            chosen = [first]
            best = unit @ unit[first]
            for _ in range(1, self.num_codes):
                nxt = int(best.argmin())
                chosen.append(nxt)
                best = torch.maximum(best, unit @ unit[nxt])
            centres = e[chosen].clone()
            for _ in range(self.config.init_kmeans_iters):
                members = (unit @ F.normalize(centres, dim=-1).T).argmax(-1)
                for k in range(self.num_codes):
                    if bool((members == k).any()):  # an empty cluster keeps its seed
                        centres[k] = e[members == k].mean(0)
            self.codes.copy_(centres.to(self.codes))

    return APTPRouter


_ROUTER_CLASS: type | None = None


def build_router(config: APTPRouterConfig, *, embed_dim: int, num_units: int) -> Any:
    """The APTP prompt router (predictor + codes, Sinkhorn OT while training, cosine at inference)."""
    global _ROUTER_CLASS
    if _ROUTER_CLASS is None:
        _ROUTER_CLASS = _torch_module_class()
    return _ROUTER_CLASS(config, embed_dim=embed_dim, num_units=num_units)
